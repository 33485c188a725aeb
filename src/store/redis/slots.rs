//! Which master owns each hash slot, as the cluster last said (`CLUSTER SLOTS`), so that the
//! renewals of keys held by one master travel in one script call ([`super::scripts::CHECK_MANY`]).
//! A stale map costs only a refused call: Redis checks every key's slot before running the
//! script, and the node then renews those keys one by one and reads the map again.

use redis::Value;

/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16_384;

/// A slot's owner: an index among the masters the map was read from.
pub(super) struct SlotMap {
    owner: Vec<u16>,
}

impl SlotMap {
    /// The map in a `CLUSTER SLOTS` reply: `[start, end, [host, port, …], replicas…]` per range.
    pub(super) fn parse(v: &Value) -> Option<SlotMap> {
        let Value::Array(ranges) = v else {
            return None;
        };
        let mut owner = vec![u16::MAX; SLOTS];
        let mut masters: Vec<(Vec<u8>, i64)> = Vec::new();
        for r in ranges {
            let Value::Array(r) = r else { return None };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(m))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return None;
            };
            let host = match m.first()? {
                Value::BulkString(b) => b.clone(),
                Value::SimpleString(s) => s.clone().into_bytes(),
                _ => return None,
            };
            let Some(Value::Int(port)) = m.get(1) else {
                return None;
            };
            let master = (host, *port);
            let ix = match masters.iter().position(|x| *x == master) {
                Some(i) => i,
                None => {
                    masters.push(master);
                    masters.len() - 1
                }
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            for o in owner.get_mut(start..=end)? {
                *o = u16::try_from(ix).ok()?;
            }
        }
        Some(SlotMap { owner })
    }

    /// The master owning `key`'s slot, if the map has one.
    pub(super) fn owner(&self, key: &str) -> Option<u16> {
        self.owner
            .get(usize::from(slot_of(key.as_bytes())))
            .copied()
            .filter(|&o| o != u16::MAX)
    }
}

/// Redis Cluster's slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first
/// `{` and the next `}`, if not empty), else of the whole key, modulo 16,384.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12_182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty first tag: the whole key counts.
        let whole = crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16_384;
        assert_eq!(slot_of(b"foo{}{bar}"), whole);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }
}
