//! The OpenAPI 3.1 document served at `GET /docs`. The tests below list every (method, path)
//! the HTTP server answers and check that the document and that list agree, so the document
//! cannot drift from the code.

use serde_json::{json, Value};

fn error_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(desc: &str, schema: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn admin(op: Value) -> Value {
    let mut op = op;
    op["security"] = json!([{"adminToken": []}]);
    op["responses"]["401"] = error_response("Missing or invalid admin token");
    op["responses"]["400"] = error_response("Malformed JSON, unknown fields, body over 64 KiB");
    op["responses"]["503"] =
        error_response("unavailable: the shared Redis store cannot be reached");
    op["responses"]["507"] = error_response(
        "insufficient_storage: the data directory's disk is full (nothing was changed)",
    );
    op
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^key_[0-9a-f]{16}$"}}])
}

fn prefix_param() -> Value {
    json!([{"name": "prefix", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[!-~]+$"}}])
}

fn name_param() -> Value {
    json!([{"name": "name", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/TierName"}}])
}

/// A scope name: 1 to 64 of `A-Z a-z 0-9 _ - . : /`.
const SCOPE_PATTERN: &str = "^[A-Za-z0-9_.:/-]{1,64}$";
/// A tier name: 1 to 64 of `A-Z a-z 0-9 _ - .`.
const TIER_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

/// What a tier's `countBy` means.
const COUNT_BY: &str = "Whose counters a check spends. key: each key its own. consumer: every key of one consumer on this tier shares one set (burst windows and monthly quota), and answers report the shared figures; a key on such a tier cannot have a monthlyQuota of its own (400). Changes only while no key uses the tier (else 409). Absent: key (not shown when key).";

/// What a tier's `enforce` means.
const ENFORCE: &str = "false: shadow mode. A check the tier's limits or quota would deny is allowed (200) with X-Quota-Shadow naming the would-be decision, consumes nothing and is counted in quotad_shadow_denials_total; keys and scopes are still enforced. Absent: true (not shown when true).";

/// The document.
pub fn document() -> Value {
    let identity_headers = json!({
        "X-Quota-Key-Id": {"schema": {"type": "string", "pattern": "^key_[0-9a-f]{16}$"}, "description": "The key's id, for the upstream"},
        "X-Quota-Consumer": {"schema": {"type": "string"}, "description": "The key's consumer, for the upstream"},
    });
    let error_header = json!({"schema": {"type": "string"}, "description": "The JSON error envelope of the body, repeated (nginx auth_request drops the body)"});
    let rl_headers = json!({
        "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "Requests allowed by the most restrictive limit"},
        "X-RateLimit-Remaining": {"schema": {"type": "integer"}, "description": "Requests left under it"},
        "X-RateLimit-Reset": {"schema": {"type": "integer"}, "description": "When it is fully restored (Unix seconds)"},
        "RateLimit-Policy": {"schema": {"type": "string"}, "description": "Every limit (draft-ietf-httpapi-ratelimit-headers-09), e.g. \"minute\";q=60;w=60"},
        "RateLimit": {"schema": {"type": "string"}, "description": "Remaining r and seconds to reset t per limit"},
        "x-request-id": {"schema": {"type": "string"}},
    });
    let mut allowed_headers = rl_headers.clone();
    allowed_headers["Sunset"] = json!({"schema": {"type": "string"}, "description": "Only for a key whose prefix is being retired: when it stops working (RFC 8594, an HTTP date)"});
    allowed_headers["Deprecation"] = json!({"schema": {"type": "string", "pattern": "^@[0-9]+$"}, "description": "Only for a key whose prefix is being retired: since when, @<Unix seconds> (RFC 9745)"});
    allowed_headers["X-Quota-Shadow"] = json!({"schema": {"type": "string", "enum": ["rate_limited", "quota_exceeded"]},
        "description": "Only on a tier in shadow mode (enforce: false, or serve --shadow), when its limits or quota would have denied this check: the would-be decision. The figures are those of that denial; nothing was consumed."});
    for (k, v) in identity_headers.as_object().into_iter().flatten() {
        allowed_headers[k] = v.clone();
    }
    let mut denied_headers = rl_headers.clone();
    denied_headers["Retry-After"] = json!({"schema": {"type": "integer", "minimum": 1}});
    denied_headers["X-Quota-Error"] = error_header.clone();
    let refused = |description: &str, www_authenticate: bool| {
        let mut headers =
            json!({"X-Quota-Error": error_header, "x-request-id": {"schema": {"type": "string"}}});
        if www_authenticate {
            headers["WWW-Authenticate"] =
                json!({"schema": {"type": "string"}, "description": "Bearer realm=\"quotad\""});
        }
        json!({"description": description, "headers": headers,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let check_params = json!([
        {"name": "X-API-Key", "in": "header", "schema": {"type": "string"}},
        {"name": "Authorization", "in": "header", "schema": {"type": "string"}, "description": "Bearer <key>"},
        {"name": "X-Quota-Scope", "in": "header", "schema": {"type": "string", "pattern": SCOPE_PATTERN}, "description": "The scope this route needs (absent: none)"},
        {"name": "X-Quota-Cost", "in": "header", "schema": {"type": "integer", "minimum": 1, "maximum": 1000000}},
        {"name": "x-request-id", "in": "header", "schema": {"type": "string", "maxLength": 128}},
    ]);
    let check_op = json!({
        "summary": "May this API key make this call?",
        "description": "The forward-auth target. Every standard method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE; any other is 405) and every path below /v1/check/ is the same check, so a gateway may forward the original request as it is; only the headers matter (a body is ignored). The key is read from X-API-Key, then Authorization: Bearer, then any --key-header.",
        "parameters": check_params,
        "responses": {
            "200": {"description": "Allowed", "headers": allowed_headers,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Allowed"}}}},
            "400": refused("Bad header (cost, scope, non-ASCII, oversized)", false),
            "401": refused("Missing, malformed, unknown, revoked or expired key (code unauthorized), or a key whose retired prefix is past its sunset (code key_format_deprecated, the message naming the prefix and the date)", true),
            "403": refused("forbidden (scope) or plan_required (tier)", false),
            "429": {"description": "rate_limited or quota_exceeded", "headers": denied_headers,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "503": error_response("unavailable: the shared Redis store cannot be reached and the node fails closed (Retry-After: 1)"),
        }
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "quotad", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Rate-limit and quota decisions for API gateways."},
        "paths": {
            "/v1/check": {"get": check_op.clone(), "post": check_op.clone(), "put": check_op.clone(),
                "patch": check_op.clone(), "delete": check_op.clone(), "options": check_op.clone(),
                "trace": check_op.clone(), "head": check_op},
            "/health": {"get": {"summary": "Liveness and persistence state", "responses": {"200": ok("Healthy (status ok)", "Health"), "503": {"description": "degraded: the shared Redis store is unreachable (the same document, status \"degraded\"; persistence.unreachableForSeconds says since when)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/docs": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/admin/v1/keys": {
                "post": admin(json!({"summary": "Create a key; the raw key is in this response only",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateKey"},
                        "example": {"consumer": "acme", "tier": "pro", "scopes": ["reports:read"], "expiresAt": "2027-01-01T00:00:00Z", "name": "production"}}}},
                    "responses": {"201": ok("Created", "Key"), "400": error_response("A bad field, an unknown tier, or a monthlyQuota on a tier counting by consumer")}})),
                "get": admin(json!({"summary": "List keys", "parameters": [
                        {"name": "consumer", "in": "query", "schema": {"$ref": "#/components/schemas/Consumer"}},
                        {"name": "tier", "in": "query", "schema": {"$ref": "#/components/schemas/TierName"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^key_[0-9a-f]{16}$"}, "description": "nextCursor of the previous page"}],
                    "responses": {"200": ok("A page of keys", "KeyList")}})),
            },
            "/admin/v1/keys/import": {"post": admin(json!({"summary": "Import a key issued elsewhere, by its raw value or its SHA-256: it then authenticates on every transport like a generated key, and rotates into a qd_ key",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportKey"},
                    "example": {"key": "tb_live_4f9a0c2e7d1b8a3f", "consumer": "acme", "tier": "pro"}}}},
                "responses": {"201": ok("Imported: the key's record (never the raw key)", "Key"), "400": error_response("A bad key, hash or field"), "409": error_response("A key with this secret exists already")}}))},
            "/admin/v1/keys/{id}": {
                "get": admin(json!({"summary": "A key and its live usage", "parameters": id_param(),
                    "responses": {"200": ok("The key", "Key"), "404": error_response("Unknown key id")}})),
                "patch": admin(json!({"summary": "Change tier, scopes, expiry, quota or name", "parameters": id_param(),
                    "requestBody": body("PatchKey"),
                    "responses": {"200": ok("The key", "Key"), "400": error_response("A bad field, an unknown tier, or a monthlyQuota on a tier counting by consumer (moving a key onto such a tier moves it onto its consumer's counters, carrying no tokens; moving it off starts its own counters afresh)"), "404": error_response("Unknown key id")}})),
                "delete": admin(json!({"summary": "Delete a key: its next check is 401, it is listed nowhere, its usage is gone", "parameters": id_param(),
                    "responses": {"200": {"description": "Deleted", "content": {"application/json": {"schema": {"type": "object", "required": ["id", "deleted"], "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean", "const": true}}}}}}, "404": error_response("Unknown key id")}})),
            },
            "/admin/v1/keys/{id}/revoke": {"post": admin(json!({"summary": "Revoke; the next check is 401", "parameters": id_param(),
                "responses": {"200": ok("The key", "Key"), "404": error_response("Unknown key id")}}))},
            "/admin/v1/keys/{id}/rotate": {"post": admin(json!({"summary": "New secret for the same record; usage carries over", "parameters": id_param(),
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rotate"}}}},
                "responses": {"200": ok("The key with its new raw key", "Key"), "404": error_response("Unknown key id")}}))},
            "/admin/v1/keys/{id}/reset": {"post": admin(json!({"summary": "Set the key's counters back: burst windows to full and/or the month's usage to 0 (an operator's reset after an incident; logged with the usage before)", "parameters": id_param(),
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reset"}}}},
                "responses": {"200": ok("The key with its usage after the reset", "Key"), "400": error_response("Nothing to reset, or a bad body"), "404": error_response("Unknown key id")}}))},
            "/admin/v1/consumers/{consumer}/usage": {"get": admin(json!({"summary": "What a consumer spends: per tier it has keys on, its keys and, on a tier counting by consumer, the usage they share",
                "parameters": [{"name": "consumer", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/Consumer"}}],
                "responses": {"200": ok("The consumer's tiers", "ConsumerUsage"), "404": error_response("The consumer has no keys")}}))},
            "/admin/v1/consumers/{consumer}/reset": {"post": admin(json!({"summary": "Reset the counters of every key of a consumer (as /admin/v1/keys/{id}/reset; counters its keys share are reset once)",
                "parameters": [{"name": "consumer", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/Consumer"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reset"}}}},
                "responses": {"200": {"description": "Every key of the consumer with its usage after the reset", "content": {"application/json": {"schema": {"type": "object", "required": ["consumer", "keys"],
                    "properties": {"consumer": {"type": "string"}, "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}}}}}},
                    "400": error_response("Nothing to reset, or a bad body"), "404": error_response("The consumer has no keys")}}))},
            "/admin/v1/prefixes": {"get": admin(json!({"summary": "Key prefixes being retired",
                "responses": {"200": {"description": "Retired prefixes", "content": {"application/json": {"schema": {"type": "object", "required": ["prefixes"],
                    "properties": {"prefixes": {"type": "array", "items": {"$ref": "#/components/schemas/RetiredPrefix"}}}}}}}}}))},
            "/admin/v1/prefixes/{prefix}": {
                "put": admin(json!({"summary": "Retire a key prefix (or move its sunset): until sunsetAt, allowed answers for keys starting with it carry Sunset (RFC 8594) and Deprecation (RFC 9745); from then on they are refused with 401 key_format_deprecated",
                    "parameters": prefix_param(),
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["sunsetAt"], "additionalProperties": false,
                        "properties": {"sunsetAt": {"type": "string", "format": "date-time"}}}, "example": {"sunsetAt": "2027-06-30T00:00:00Z"}}}},
                    "responses": {"200": ok("The retired prefix", "RetiredPrefix"), "400": error_response("A bad prefix or date")}})),
                "delete": admin(json!({"summary": "Take a prefix off the retired list: its keys work as before", "parameters": prefix_param(),
                    "responses": {"200": {"description": "Restored", "content": {"application/json": {"schema": {"type": "object", "required": ["prefix", "deleted"], "properties": {"prefix": {"type": "string"}, "deleted": {"type": "boolean", "const": true}}}}}}, "404": error_response("The prefix is not retired")}})),
            },
            "/admin/v1/tiers": {
                "get": admin(json!({"summary": "Tiers in force", "responses": {"200": ok("Tiers", "TierList")}})),
                "put": admin(json!({"summary": "Replace the whole set of tiers at once (a tiers file); tiers left out are deleted, refused (409) while keys use them",
                    "requestBody": body("TierList"), "responses": {"200": ok("Tiers now in force", "TierList"), "409": error_response("A tier left out is in use, or a tier keys use changes its countBy")}})),
            },
            "/admin/v1/tiers/{name}": {
                "get": admin(json!({"summary": "One tier", "parameters": name_param(),
                    "responses": {"200": ok("The tier", "Tier"), "404": error_response("Unknown tier")}})),
                "put": admin(json!({"summary": "Create or change a tier (in force from the next check)", "parameters": name_param(),
                    "requestBody": body("PutTier"), "responses": {"200": ok("The tier", "Tier"), "400": error_response("A bad tier"), "409": error_response("countBy changed while keys use the tier")}})),
                "delete": admin(json!({"summary": "Delete a tier no key uses", "parameters": name_param(),
                    "responses": {"200": {"description": "Deleted"}, "404": error_response("Unknown tier"), "409": error_response("Keys use this tier")}})),
            },
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message", "requestId"],
                    "properties": {"code": {"type": "string", "enum": ["bad_request", "unauthorized", "key_format_deprecated", "forbidden", "plan_required", "rate_limited", "quota_exceeded", "not_found", "conflict", "method_not_allowed", "internal", "unavailable"]},
                                   "message": {"type": "string"}, "requestId": {"type": "string"}}}}},
                "Allowed": {"type": "object", "properties": {"allowed": {"const": true}, "keyId": {"type": "string"},
                    "consumer": {"type": "string"}, "tier": {"type": "string"}}},
                "Health": {"type": "object", "properties": {"status": {"const": "ok"}, "dataDir": {"type": "string"},
                    "keys": {"type": "integer"}, "tiers": {"type": "integer"}, "persistence": {"type": "object"}}},
                "Consumer": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\u0000]+$"},
                "TierName": {"type": "string", "pattern": TIER_PATTERN},
                "Scope": {"type": "string", "pattern": SCOPE_PATTERN},
                "CreateKey": {"type": "object", "required": ["consumer", "tier"], "additionalProperties": false, "properties": {
                    "consumer": {"$ref": "#/components/schemas/Consumer"}, "tier": {"$ref": "#/components/schemas/TierName"},
                    "scopes": {"type": "array", "items": {"$ref": "#/components/schemas/Scope"}},
                    "expiresAt": {"type": "string", "format": "date-time"}, "monthlyQuota": {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64},
                    "name": {"type": "string", "maxLength": 56, "pattern": "^[^\\u0000]*$"}, "prefix": {"type": "string", "pattern": "^[A-Za-z0-9_-]{0,16}$"}}},
                "ImportKey": {"type": "object", "required": ["consumer", "tier"], "additionalProperties": false,
                    "description": "Exactly one of key and keyHash. The raw key is hashed on arrival and never stored, logged or returned.",
                    "properties": {
                    "key": {"type": "string", "minLength": 16, "maxLength": 256, "pattern": "^[!-~]+$", "description": "The existing raw key (visible ASCII)"},
                    "keyHash": {"type": "string", "pattern": "^sha256:[0-9a-fA-F]{64}$", "description": "SHA-256 of the raw key, for a provider that kept only hashes"},
                    "prefix": {"type": "string", "minLength": 1, "maxLength": 16, "pattern": "^[!-~]+$", "description": "What listings show of the key; required with keyHash (default with key: its first quarter, at most 12 characters)"},
                    "consumer": {"$ref": "#/components/schemas/Consumer"}, "tier": {"$ref": "#/components/schemas/TierName"},
                    "scopes": {"type": "array", "items": {"$ref": "#/components/schemas/Scope"}},
                    "expiresAt": {"type": "string", "format": "date-time"}, "monthlyQuota": {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64},
                    "name": {"type": "string", "maxLength": 56, "pattern": "^[^\\u0000]*$"}}},
                "PatchKey": {"type": "object", "additionalProperties": false, "properties": {
                    "tier": {"$ref": "#/components/schemas/TierName"}, "scopes": {"type": "array", "items": {"$ref": "#/components/schemas/Scope"}},
                    "expiresAt": {"type": ["string", "null"], "format": "date-time"},
                    "monthlyQuota": {"type": ["integer", "null"], "minimum": 0, "maximum": 9_007_199_254_740_991_u64}, "name": {"type": ["string", "null"], "maxLength": 56, "pattern": "^[^\\u0000]*$"}}},
                "RetiredPrefix": {"type": "object", "required": ["prefix", "sunsetAt", "deprecatedAt"], "properties": {
                    "prefix": {"type": "string"}, "sunsetAt": {"type": "string", "format": "date-time", "description": "Keys with the prefix are refused from then on"},
                    "deprecatedAt": {"type": "string", "format": "date-time", "description": "When it was first retired (the Deprecation header's date)"}}},
                "Reset": {"type": "object", "additionalProperties": false, "properties": {
                    "burst": {"type": "boolean", "default": true, "description": "Every burst window back to full"},
                    "monthly": {"type": "boolean", "default": true, "description": "The month's usage back to 0"}},
                    "description": "At least one true; no body resets both"},
                "Rotate": {"type": "object", "additionalProperties": false, "properties": {"graceSeconds": {"type": "integer", "minimum": 0, "maximum": 31_536_000, "description": "How long the old secret keeps working, at most a year"}}},
                "Key": {"type": "object", "properties": {
                    "id": {"type": "string"}, "key": {"type": "string", "description": "Raw key: create and rotate responses only"},
                    "prefix": {"type": "string"}, "consumer": {"type": "string"}, "tier": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string"}}, "expiresAt": {"type": ["string", "null"]},
                    "monthlyQuota": {"type": ["integer", "null"]}, "name": {"type": ["string", "null"]},
                    "createdAt": {"type": "string"}, "revoked": {"type": "boolean"},
                    "usage": {"$ref": "#/components/schemas/Usage"}}},
                "Usage": {"type": "object", "description": "Live figures; on a tier counting by consumer, those the consumer's keys share", "properties": {
                    "limits": {"type": "array", "items": {"type": "object", "properties": {
                        "requests": {"type": "integer"}, "periodSeconds": {"type": "integer"},
                        "remaining": {"type": "integer"}, "reset": {"type": "integer"}}}},
                    "monthlyUsed": {"type": "integer"}, "monthlyQuota": {"type": ["integer", "null"]},
                    "lastUsedAt": {"type": ["string", "null"]}}},
                "ConsumerUsage": {"type": "object", "required": ["consumer", "tiers"], "properties": {
                    "consumer": {"type": "string"},
                    "tiers": {"type": "array", "description": "Each tier the consumer has keys on, in the order of its first key", "items": {"type": "object", "required": ["tier", "countBy", "keys"], "properties": {
                        "tier": {"type": "string"}, "countBy": {"type": "string", "enum": ["key", "consumer"]},
                        "keys": {"type": "array", "items": {"type": "string"}, "description": "The consumer's key ids on this tier"},
                        "usage": {"$ref": "#/components/schemas/Usage", "description": "Only on a tier counting by consumer: what its keys share (on a tier counting by key each key has its own: GET /admin/v1/keys/{id})"}}}}}},
                "KeyList": {"type": "object", "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                    "nextCursor": {"type": ["string", "null"]}}},
                "Limit": {"type": "object", "required": ["requests", "periodSeconds"], "additionalProperties": false,
                    "properties": {"requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                                   "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 31_622_400}}},
                "Tier": {"type": "object", "required": ["name", "limits"], "additionalProperties": false, "properties": {"name": {"$ref": "#/components/schemas/TierName"},
                    "limits": {"type": "array", "items": {"$ref": "#/components/schemas/Limit"}, "minItems": 1, "maxItems": 4},
                    "monthlyQuota": {"type": ["integer", "null"], "minimum": 0, "maximum": 9_007_199_254_740_991_u64},
                    "scopes": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Scope"}},
                    "enforce": {"type": "boolean", "default": true, "description": ENFORCE},
                    "countBy": {"type": "string", "enum": ["key", "consumer"], "default": "key", "description": COUNT_BY}}},
                "PutTier": {"type": "object", "required": ["limits"], "additionalProperties": false, "properties": {
                    "limits": {"type": "array", "items": {"$ref": "#/components/schemas/Limit"}, "minItems": 1, "maxItems": 4},
                    "monthlyQuota": {"type": ["integer", "null"], "minimum": 0, "maximum": 9_007_199_254_740_991_u64}, "scopes": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Scope"}},
                    "enforce": {"type": "boolean", "default": true, "description": ENFORCE},
                    "countBy": {"type": "string", "enum": ["key", "consumer"], "default": "key", "description": COUNT_BY}}},
                "TierList": {"type": "object", "properties": {"tiers": {"type": "array", "items": {"$ref": "#/components/schemas/Tier"}}}},
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route: (method, OpenAPI path). `/v1/check` also answers any method and any path below it.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/v1/check"),
        ("post", "/v1/check"),
        ("put", "/v1/check"),
        ("patch", "/v1/check"),
        ("delete", "/v1/check"),
        ("options", "/v1/check"),
        ("trace", "/v1/check"),
        ("head", "/v1/check"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/docs"),
        ("post", "/admin/v1/keys"),
        ("get", "/admin/v1/keys"),
        ("get", "/admin/v1/keys/{id}"),
        ("patch", "/admin/v1/keys/{id}"),
        ("delete", "/admin/v1/keys/{id}"),
        ("post", "/admin/v1/keys/{id}/revoke"),
        ("post", "/admin/v1/keys/{id}/rotate"),
        ("post", "/admin/v1/keys/{id}/reset"),
        ("post", "/admin/v1/keys/import"),
        ("get", "/admin/v1/prefixes"),
        ("put", "/admin/v1/prefixes/{prefix}"),
        ("delete", "/admin/v1/prefixes/{prefix}"),
        ("get", "/admin/v1/consumers/{consumer}/usage"),
        ("post", "/admin/v1/consumers/{consumer}/reset"),
        ("get", "/admin/v1/tiers"),
        ("put", "/admin/v1/tiers"),
        ("get", "/admin/v1/tiers/{name}"),
        ("put", "/admin/v1/tiers/{name}"),
        ("delete", "/admin/v1/tiers/{name}"),
    ];

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_listed() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), p.clone()))
            })
            .collect();
        documented.sort();
        let mut listed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        listed.sort();
        assert_eq!(documented, listed);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }
}
