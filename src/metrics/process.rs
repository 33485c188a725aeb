//! The standard `process_*` figures Prometheus clients export, read from `/proc`.

/// The standard `process_*` metrics of this process, from `/proc` (absent where it is not):
/// (name, type, help, value) each.
pub(super) fn figures() -> Vec<(&'static str, &'static str, &'static str, f64)> {
    // SAFETY: sysconf and getrlimit read process-wide settings into locals.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let mut out: Vec<(&str, &str, &str, f64)> = Vec::new();
    if ticks > 0 {
        let hz = ticks as f64;
        if let (Some(u), Some(sy)) = (field(14), field(15)) {
            out.push((
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (u + sy) / hz,
            ));
        }
        if let (Some(start), Some(bt)) = (field(22), btime) {
            out.push((
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                bt + start / hz,
            ));
        }
    }
    if let Some(vsize) = field(23) {
        out.push((
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        ));
    }
    if let (Some(rss), true) = (field(24), page > 0) {
        out.push((
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss * page as f64,
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push((
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        ));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        out.push((
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            lim.rlim_cur as f64,
        ));
    }
    out
}
