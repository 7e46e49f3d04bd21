//! The admin API as its OpenAPI document describes it: a running gate with mail delivered,
//! deferred and quarantined; the document read from the gate itself; every documented operation
//! called with valid inputs (path parameters from the gate's own data), its status one the
//! document lists and its JSON body valid against the documented schema; bad requests to each
//! operation answered with a documented 4xx and `{"error": ...}` without internal detail. An
//! operation the document lists that this test does not call fails it.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use support::http::{HttpAnswer, http};
use support::{Gate, GateConfig, SOON, Upstream, message, smtplib_send, wait_until};

const HOLD: &str = r#"
[[filter]]
name = "hold"
kind = "content"
body_rules = [{ regex = "wire transfer urgently", action = "quarantine" }]
"#;

/// The JSON-schema subset `openapi.json` uses: `$ref` (to `#/components/schemas/`), `anyOf`,
/// `type` (a name or a list of names), `enum`, `properties`, `required`, `items`.
mod schema {
    use serde_json::Value;

    pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target
                .strip_prefix("#/components/schemas/")
                .ok_or_else(|| format!("{at}: unsupported $ref {target}"))?;
            let inner = doc["components"]["schemas"]
                .get(name)
                .ok_or_else(|| format!("{at}: no schema {name}"))?;
            return validate(doc, inner, value, at);
        }
        if let Some(alternatives) = schema.get("anyOf").and_then(Value::as_array) {
            let errors: Vec<String> = alternatives
                .iter()
                .filter_map(|s| validate(doc, s, value, at).err())
                .collect();
            if errors.len() == alternatives.len() {
                return Err(format!("{at}: matches none of anyOf: {}", errors.join("; ")));
            }
        }
        if let Some(types) = schema.get("type") {
            let names: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("{at}: a type that is not a name")),
            };
            if !names.iter().any(|t| is_type(t, value)) {
                return Err(format!("{at}: {value} is not {names:?}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let Value::Object(object) = value {
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !object.contains_key(name) {
                    return Err(format!("{at}: {name} is missing"));
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, inner) in properties {
                    if let Some(v) = object.get(name) {
                        validate(doc, inner, v, &format!("{at}.{name}"))?;
                    }
                }
            }
        }
        if let (Value::Array(items), Some(inner)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                validate(doc, inner, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn is_type(name: &str, value: &Value) -> bool {
        match name {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        }
    }
}

#[test]
fn the_validator_rejects_wrong_shapes() {
    let doc = json!({"components": {"schemas": {
        "Item": {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": ["string", "null"]}},
                 "required": ["n"]},
        "E": {"type": "string", "enum": ["a", "b"]}
    }}});
    let list = json!({"type": "array", "items": {"$ref": "#/components/schemas/Item"}});
    let ok = |schema: &Value, value: Value| schema::validate(&doc, schema, &value, "$").is_ok();
    assert!(ok(&list, json!([{"n": 1}, {"n": 2, "s": null}, {"n": 3, "s": "x"}])));
    assert!(!ok(&list, json!({"n": 1})), "an object is not an array");
    assert!(!ok(&list, json!([{"s": "x"}])), "a required property is missing");
    assert!(!ok(&list, json!([{"n": "1"}])), "a string is not an integer");
    assert!(!ok(&list, json!([{"n": 1.5}])), "1.5 is not an integer");
    assert!(!ok(&list, json!([{"n": 1, "s": 2}])), "2 is neither string nor null");
    let e = json!({"$ref": "#/components/schemas/E"});
    assert!(ok(&e, json!("a")));
    assert!(!ok(&e, json!("c")), "not in the enum");
    let either = json!({"anyOf": [{"type": "integer"}, {"$ref": "#/components/schemas/E"}]});
    assert!(ok(&either, json!(5)) && ok(&either, json!("b")));
    assert!(!ok(&either, json!("z")), "matches neither alternative");
    assert!(
        !ok(&json!({"$ref": "#/components/schemas/Nope"}), json!(1)),
        "an unknown $ref"
    );
}

/// Words an error must not carry: serde's positions, Rust paths, file names, panics, OS errors.
const INTERNAL: &[&str] = &[
    "at line",
    "column",
    "::",
    ".rs",
    "/tmp",
    "/home",
    "/work",
    "spool/",
    "panicked",
    "os error",
    "No such file",
    "Error {",
    "Kind(",
];

/// One call: an operation, its path parameters, its query and body.
#[derive(Clone, Default)]
struct Call {
    op: &'static str,
    params: Vec<(&'static str, String)>,
    query: String,
    /// Content type and body.
    body: Option<(&'static str, Vec<u8>)>,
    /// Without the token.
    anonymous: bool,
}

fn call(op: &'static str) -> Call {
    Call { op, ..Call::default() }
}

impl Call {
    fn param(mut self, name: &'static str, value: &str) -> Call {
        self.params.push((name, value.to_owned()));
        self
    }
    fn query(mut self, query: &str) -> Call {
        self.query = query.to_owned();
        self
    }
    fn json(mut self, body: &str) -> Call {
        self.body = Some(("application/json", body.as_bytes().to_vec()));
        self
    }
    fn body(mut self, content_type: &'static str, body: &str) -> Call {
        self.body = Some((content_type, body.as_bytes().to_vec()));
        self
    }
    fn anonymous(mut self) -> Call {
        self.anonymous = true;
        self
    }
}

/// The document's operations by operationId: method, path and the operation.
struct Api {
    doc: Value,
    ops: BTreeMap<String, (String, String, Value)>,
}

impl Api {
    fn new(doc: Value) -> Api {
        let mut ops = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().expect("operationId").to_owned();
                ops.insert(id, (method.to_uppercase(), path.clone(), op.clone()));
            }
        }
        Api { doc, ops }
    }
}

/// Runs calls against one gate and checks each answer against the document.
struct Client<'a> {
    gate: &'a Gate,
    api: &'a Api,
    token: String,
    exercised: BTreeSet<String>,
    refused: BTreeSet<String>,
}

impl Client<'_> {
    fn send(&self, c: &Call) -> (String, HttpAnswer) {
        let (method, template, _) = self
            .api
            .ops
            .get(c.op)
            .unwrap_or_else(|| panic!("{} is not in the document", c.op));
        let mut path = template.clone();
        for (name, value) in &c.params {
            let encoded: String = value
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' | b'/' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            path = path.replace(&format!("{{{name}}}"), &encoded);
        }
        assert!(!path.contains('{'), "{}: a path parameter is not given: {path}", c.op);
        if !c.query.is_empty() {
            path = format!("{path}?{}", c.query);
        }
        let auth = format!("Bearer {}", self.token);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if !c.anonymous {
            headers.push(("Authorization", &auth));
        }
        if let Some((content_type, _)) = &c.body {
            headers.push(("Content-Type", content_type));
        }
        let answer = http(
            self.gate.admin_addr(),
            method,
            &path,
            &headers,
            c.body.as_ref().map(|(_, b)| b.as_slice()),
        );
        (format!("{} {method} {path}", c.op), answer)
    }

    /// The documented response for `status`, or a failure naming the call.
    fn documented(&self, c: &Call, what: &str, answer: &HttpAnswer) -> Value {
        let op = &self.api.ops[c.op].2;
        let response = op["responses"][answer.status.to_string()].clone();
        assert!(
            response.is_object(),
            "{what}: status {} is not documented: {}",
            answer.status,
            answer.text()
        );
        response
    }

    /// Checks the body against the response's content: its media type, and its schema if JSON.
    fn check_body(&self, what: &str, response: &Value, answer: &HttpAnswer) -> Option<Value> {
        let content = response["content"].as_object().expect("content");
        let got = answer.header("content-type").unwrap_or_default();
        let (media, body) = content
            .iter()
            .find(|(media, _)| got.starts_with(media.as_str()))
            .unwrap_or_else(|| panic!("{what}: content type {got:?} is not one of {:?}", content.keys()));
        if media != "application/json" {
            return None;
        }
        let value = answer.json().unwrap_or_else(|e| panic!("{what}: {e}"));
        schema::validate(&self.api.doc, &body["schema"], &value, "$")
            .unwrap_or_else(|e| panic!("{what}: the answer does not match the schema: {e}\n{value:#}"));
        Some(value)
    }

    /// A valid call: a 2xx the document lists, its body valid. Its JSON, if it is JSON.
    fn ok(&mut self, c: Call) -> Value {
        let (what, answer) = self.send(&c);
        assert!(
            (200..300).contains(&answer.status),
            "{what}: {} {}",
            answer.status,
            answer.text()
        );
        let response = self.documented(&c, &what, &answer);
        let value = self.check_body(&what, &response, &answer);
        self.exercised.insert(c.op.to_owned());
        value.unwrap_or_else(|| Value::String(answer.text()))
    }

    /// A bad call: `status`, documented, with `{"error": ...}` and no internal detail.
    fn bad(&mut self, c: Call, status: u16) -> String {
        let (what, answer) = self.send(&c);
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
        let response = self.documented(&c, &what, &answer);
        let value = self
            .check_body(&what, &response, &answer)
            .unwrap_or_else(|| panic!("{what}: the error is not JSON"));
        let message = value["error"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{what}: an empty error");
        // A configuration's mistakes are the admin's own file: its path, line and column are
        // what the answer is for (`the_config_is_shown_masked_checked_and_reloaded_over_the_api`).
        let about_a_file = ["checkConfig", "reloadConfig"].contains(&c.op);
        let position = ["at line", "column", "/tmp"];
        for word in INTERNAL.iter().filter(|w| !(about_a_file && position.contains(w))) {
            assert!(
                !message.contains(word),
                "{what}: internal detail {word:?} in {message:?}"
            );
        }
        if status != 401 {
            self.refused.insert(c.op.to_owned());
        }
        message
    }
}

/// Sends `n` messages from `from` to `to`, each with `body`.
fn send(gate: &Gate, n: usize, to: &str, body: &str) {
    for i in 0..n {
        let id = format!("oa-{to}-{i}@x");
        let t = smtplib_send(
            gate.smtp_addr(),
            "sender@example.test",
            &[to],
            &message(&id, "openapi", body),
        );
        assert!(t.reply("END-OF-DATA").starts_with("250"), "{t}");
    }
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"hold\"]")
        .to_toml()
        + HOLD;
    let gate = Gate::start(&toml);
    send(&gate, 2, "ok@example.org", "hello");
    send(&gate, 3, "tempfail-rcpt@example.org", "later");
    send(&gate, 2, "ok@example.org", "please wire transfer urgently");
    upstream.wait_for(2, SOON);

    // The document, from the running gate, without the token; the same as the file.
    let served = http(gate.admin_addr(), "GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.header("content-type"), Some("application/json"));
    let doc = served.json().expect("the document");
    let file: Value = serde_json::from_str(include_str!("../src/server/openapi.json")).unwrap();
    assert_eq!(doc, file, "the gate serves openapi.json");
    let api = Api::new(doc);
    let mut client = Client {
        gate: &gate,
        api: &api,
        token: gate.admin_token(),
        exercised: BTreeSet::new(),
        refused: BTreeSet::new(),
    };

    // Wait for the content the calls need: deferred messages, two quarantined, a delivery event.
    let ready = wait_until(SOON, || {
        let queued = client.ok(call("listQueue").query("state=deferred"));
        let quarantined = client.ok(call("listQuarantine"));
        let delivered = client.ok(call("listEvents").query("type=delivered"));
        queued["total"] == 3 && quarantined.as_array().map(Vec::len) == Some(2) && delivered[0].is_object()
    });
    assert!(ready, "three deferred, two quarantined and a delivery");

    // Open operations, and what reads the gate's state.
    assert_eq!(client.ok(call("health").anonymous()), "ok\n");
    let metrics = client.ok(call("metrics").anonymous());
    assert!(metrics.as_str().unwrap().contains("smtpgate_"), "{metrics}");
    client.ok(call("openapi").anonymous());
    client.ok(call("getShaping"));
    client.ok(call("getSources"));
    let pools = client.ok(call("listPools"));
    assert_eq!(pools[0]["name"], "upstream", "{pools}");
    let stats = client.ok(call("getStats").query("since=1h&by=domain&bucket=minute"));
    assert!(stats["totals"].is_object(), "{stats}");
    let delivered = client.ok(call("listEvents").query("since=1h&type=delivered&limit=10"));
    let queue_id = delivered[0]["queue_id"]
        .as_str()
        .expect("a delivered event's queue id")
        .to_owned();
    let story = client.ok(call("searchMessages").query(&format!("q={queue_id}&order=asc&since=1h&limit=50")));
    assert!(
        story.as_array().unwrap().iter().any(|e| e["type"] == "delivered"),
        "{story}"
    );

    // The queue, with ids from its own list.
    let list = client.ok(call("listQueue").query("state=deferred&limit=10&offset=0"));
    let ids: Vec<String> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    let shown = client.ok(call("getQueued").param("id", a));
    assert_eq!(shown["id"], a);
    let content = client.ok(call("getQueuedMessage").param("id", a));
    assert!(content.as_str().unwrap().contains("later"), "{content}");
    for (op, expect) in [
        ("holdOne", "held"),
        ("releaseOne", "deferred"),
        ("retryOne", "deferred"),
    ] {
        let done = client.ok(call(op).param("id", a));
        assert_eq!(done["messages"], 1, "{op}: {done}");
        if expect == "held" {
            assert_eq!(client.ok(call("getQueued").param("id", a))["state"], "held");
        }
    }
    let done = client.ok(call("bounceOne").param("id", a).query("reason=openapi%20test"));
    assert_eq!(done["messages"], 1, "{done}");
    let done = client.ok(call("deleteOne").param("id", b).json("{}"));
    assert_eq!(done["messages"], 1, "{done}");
    // Bulk actions, by query and by JSON body: one message is left (ids[2]).
    let done = client.ok(call("holdAll").json(r#"{"recipient": "tempfail-rcpt@example.org"}"#));
    assert_eq!(done["messages"], 1, "{done}");
    let done = client.ok(call("releaseAll").query("state=held"));
    assert_eq!(done["messages"], 1, "{done}");
    let done = client.ok(call("retryAll").query("domain=example.org"));
    assert_eq!(done["messages"], 1, "{done}");
    let done = client.ok(call("bounceAll").query("domain=nowhere.test&reason=none"));
    assert_eq!(done["messages"], 0, "{done}");
    let done = client.ok(call("deleteAll").json(r#"{"domain": "example.org"}"#));
    assert_eq!(done["messages"], 1, "{done}");

    // The quarantine, with its own ids.
    let entries = client.ok(call("listQuarantine"));
    let q: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let held = client.ok(call("getQuarantined").param("id", &q[0]));
    assert!(held.as_str().unwrap().contains("wire transfer urgently"), "{held}");
    let released = client.ok(call("releaseQuarantined").param("id", &q[0]));
    assert!(released["message"].as_str().unwrap().contains("released"), "{released}");
    client.ok(call("deleteQuarantined").param("id", &q[1]));

    // The suppression list.
    let address = "manual@example.org";
    let added = client.ok(call("addSuppression").param("address", address));
    assert_eq!(added["new"], true, "{added}");
    assert_eq!(
        client.ok(call("getSuppression").param("address", address))["reason"],
        "manual"
    );
    assert_eq!(client.ok(call("listSuppression"))[0]["address"], address);
    client.ok(call("removeSuppression").param("address", address));

    // Adaptive actions, started by hand.
    let key = "default/domain:slow.test";
    let set = client.ok(call("setThrottle")
        .param("key", key)
        .query("duration=1h&suspend=true&reason=openapi"));
    assert_eq!(set["key"], key, "{set}");
    assert_eq!(client.ok(call("listThrottles"))[0]["key"], key);
    assert_eq!(client.ok(call("getThrottle").param("key", key))["reason"], "openapi");
    client.ok(call("cancelThrottle").param("key", key));

    // Injection.
    let request = r#"{"envelope_sender": "app@example.test", "recipients": [{"email": "ok@example.org"}],
                      "content": "From: app@example.test\nSubject: injected\n\nbody\n"}"#;
    let injected = client.ok(call("inject").json(request));
    assert_eq!(injected["accepted"][0]["recipient"], "ok@example.org", "{injected}");

    // Suspensions: one made, listed and resumed.
    let suspended = client.ok(call("suspend").json(r#"{"domain": "Slow.Example", "for": "1h", "reason": "openapi"}"#));
    assert_eq!(suspended["value"], "slow.example", "{suspended}");
    assert_eq!(suspended["replaced"], false, "{suspended}");
    assert_eq!(client.ok(call("listSuspensions"))[0]["reason"], "openapi");
    let resumed = client.ok(call("resume").param("kind", "domain").param("value", "slow.example"));
    assert_eq!(resumed["resumed"]["kind"], "domain", "{resumed}");
    assert_eq!(client.ok(call("listSuspensions")), serde_json::json!([]));

    // The configuration: shown, a candidate checked, the file read again.
    let shown = client.ok(call("getConfig"));
    assert_eq!(shown["summary"]["pools"][0], "upstream", "{shown}");
    assert!(shown["file"].as_str().unwrap().ends_with("smtpgate.toml"), "{shown}");
    let checked = client.ok(call("checkConfig").body("application/toml", &toml));
    assert_eq!(checked["ok"], true, "{checked}");
    let reloaded = client.ok(call("reloadConfig"));
    assert_eq!(reloaded["reloaded"], true, "{reloaded}");

    // Bad requests: a bad query value, a bad body, an unknown id.
    let unknown = "00000000DEADBEEF";
    client.bad(call("getStats").query("since=soon"), 400);
    client.bad(call("getStats").query("by=colour"), 400);
    client.bad(call("getStats").query("nodes=all"), 400);
    client.bad(call("listEvents").query("limit=0"), 400);
    client.bad(call("listEvents").query("since=%FF"), 400);
    client.bad(call("searchMessages"), 400);
    client.bad(call("searchMessages").query("q=x&order=sideways"), 400);
    client.bad(call("listQueue").query("state=bogus"), 400);
    client.bad(call("listQueue").query("limit=many"), 400);
    client.bad(call("listQueue").query("colour=red"), 400);
    client.bad(call("getQueued").param("id", unknown), 404);
    client.bad(call("getQueuedMessage").param("id", "not-an-id"), 404);
    for action in ["retry", "bounce", "delete", "hold", "release"] {
        let one: &'static str = Box::leak(format!("{action}One").into_boxed_str());
        let all: &'static str = Box::leak(format!("{action}All").into_boxed_str());
        client.bad(call(one).param("id", unknown), 404);
        client.bad(call(one).param("id", unknown).json("{nope"), 400);
        client.bad(call(one).param("id", unknown).body("text/plain", "all=true"), 415);
        let message = client.bad(call(all), 400);
        assert!(message.contains("all=true"), "{message}");
        client.bad(call(all).query("older_than=soon"), 400);
        client.bad(call(all).json("[1, 2]"), 400);
        client.bad(call(all).json(r#"{"domain": {"nested": 1}}"#), 400);
        client.bad(call(all).body("application/x-www-form-urlencoded", "all=true"), 415);
    }
    client.bad(call("getQuarantined").param("id", "no-such-entry"), 404);
    client.bad(call("deleteQuarantined").param("id", "nothing"), 404);
    client.bad(call("releaseQuarantined").param("id", &q[0]), 404);
    client.bad(call("getSuppression").param("address", address), 404);
    client.bad(call("addSuppression").param("address", "not an address"), 400);
    client.bad(call("removeSuppression").param("address", address), 404);
    client.bad(call("getThrottle").param("key", "nonsense"), 400);
    client.bad(call("getThrottle").param("key", key), 404);
    client.bad(call("setThrottle").param("key", key).query("duration=soon"), 400);
    client.bad(call("setThrottle").param("key", key).query("speed=fast"), 400);
    client.bad(call("cancelThrottle").param("key", key), 404);
    client.bad(call("inject").json("{\"envelope_sender\": "), 400);
    let message = client.bad(
        call("inject").json(r#"{"envelope_sender": 5, "recipients": [], "content": ""}"#),
        400,
    );
    assert!(message.contains("invalid type"), "{message}");
    client.bad(
        call("inject").json(r#"{"envelope_sender": "", "recipients": [], "content": ""}"#),
        400,
    );
    client.bad(call("inject").body("text/plain", request), 415);
    client.bad(call("suspend").json("{}"), 400);
    client.bad(call("suspend").json(r#"{"pool": "nowhere"}"#), 400);
    client.bad(call("suspend").json(r#"{"domain": "a.test", "for": "soon"}"#), 400);
    client.bad(call("suspend").json("{nope"), 400);
    client.bad(call("resume").param("kind", "planet").param("value", "x"), 400);
    client.bad(
        call("resume").param("kind", "domain").param("value", "slow.example"),
        404,
    );
    let mistakes = client.bad(call("checkConfig").body("application/toml", "hostname = 5\n"), 422);
    assert!(mistakes.contains("hostname"), "{mistakes}");
    client.bad(call("checkConfig").body("application/toml", &"#".repeat(2 << 20)), 413);
    // A broken file is refused and the running configuration stays.
    let file = gate.dir().join("smtpgate.toml");
    std::fs::write(&file, "hostname = [\n").unwrap();
    let refused = client.bad(call("reloadConfig"), 422);
    assert!(refused.contains("old configuration stays"), "{refused}");
    std::fs::write(&file, &toml).unwrap();
    assert_eq!(client.ok(call("getConfig"))["summary"]["pools"][0], "upstream");

    // Without the token: 401 for everything but the open operations.
    let ops: Vec<(String, String, Value)> = api
        .ops
        .iter()
        .map(|(id, (_, p, op))| (id.clone(), p.clone(), op.clone()))
        .collect();
    for (id, path, op) in &ops {
        if op["security"].as_array().is_some_and(|s| s.is_empty()) {
            continue;
        }
        let id: &'static str = Box::leak(id.clone().into_boxed_str());
        let mut c = call(id).anonymous();
        for name in path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            c = c.param(Box::leak(name.to_owned().into_boxed_str()), "x");
        }
        let message = client.bad(c, 401);
        assert!(message.contains("Bearer"), "{id}: {message}");
    }

    // Every documented operation was called; every one that documents a 4xx besides 401 was
    // refused at least once.
    let all: BTreeSet<String> = api.ops.keys().cloned().collect();
    let missed: Vec<&String> = all.difference(&client.exercised).collect();
    assert!(missed.is_empty(), "documented but never called: {missed:?}");
    let can_refuse: BTreeSet<String> = ops
        .iter()
        .filter(|(_, _, op)| {
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|s| s.starts_with('4') && s != "401")
        })
        .map(|(id, _, _)| id.clone())
        .collect();
    let never_refused: Vec<&String> = can_refuse.difference(&client.refused).collect();
    assert!(
        never_refused.is_empty(),
        "documented 4xx never provoked: {never_refused:?}"
    );
}

/// Paths nothing is served at, and methods a path does not answer: JSON errors too, with `Allow`.
#[test]
fn unknown_routes_and_methods_answer_json() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());
    let auth = format!("Bearer {}", gate.admin_token());
    let headers = [("Authorization", auth.as_str())];
    let check = |answer: &HttpAnswer, status: u16| {
        assert_eq!(answer.status, status, "{}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let value = answer.json().unwrap();
        let message = value["error"].as_str().unwrap_or_else(|| panic!("{value}"));
        for word in INTERNAL {
            assert!(!message.contains(word), "{message}");
        }
        message.to_owned()
    };
    let missing = http(gate.admin_addr(), "GET", "/api/v1/nothing", &headers, None);
    assert!(check(&missing, 404).contains("/api/v1/nothing"));
    let wrong = http(gate.admin_addr(), "PATCH", "/api/v1/queue", &headers, None);
    check(&wrong, 405);
    assert!(
        wrong.header("allow").is_some_and(|a| a.contains("GET")),
        "{:?}",
        wrong.headers
    );
    let wrong = http(gate.admin_addr(), "DELETE", "/api/v1/queue/retry", &headers, None);
    check(&wrong, 405);
    let post = http(
        gate.admin_addr(),
        "POST",
        "/api/v1/queue/0000000000000001",
        &headers,
        None,
    );
    check(&post, 405);
    let bad_path = http(gate.admin_addr(), "GET", "/api/v1/quarantine/%FF%FE", &headers, None);
    check(&bad_path, 400);
}
