//! docs/job.schema.json says what `Job::parse` says: every example here is
//! judged by both, and both must give the verdict the example expects.
//!
//! Rules of the parser that JSON Schema cannot express have no example here,
//! because the schema cannot agree on them:
//! - the size limit (`kafka.max_job_bytes`, counted in bytes of the record);
//! - bytes that are not UTF-8, a key given twice, text after the JSON value:
//!   none of them survives being read into a JSON value;
//! - the forms of date and time chrono accepts beyond RFC 3339 (a space
//!   instead of `T`, `+0000`, `UTC`), which the schema refuses.

use std::sync::LazyLock;

use serde_json::{json, Value};
use wabulk_model::{Job, ParseOptions};

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/job.schema.json");
    let text = std::fs::read_to_string(path).expect("read docs/job.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("docs/job.schema.json is JSON");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        // As a producer's validator should be set: `format` asserts.
        .should_validate_formats(true)
        .build(&schema)
        .expect("docs/job.schema.json is a valid draft 2020-12 schema")
});

/// The contract's example job (CONTRACT §2).
fn job() -> Value {
    json!({
        "id": "order-8812-confirm",
        "phone_number_id": "106540352242922",
        "waba_id": "102290129340398",
        "to": "+15551234567",
        "message": { "type": "text", "text": { "body": "Your order shipped" } },
        "not_before": "2026-11-21T10:00:00Z",
        "expires_at": "2026-11-21T12:00:00Z",
        "metadata": { "campaign": "nov-shipping" }
    })
}

/// The example job with `path` (keys separated by `/`) set to `value`.
fn with(path: &str, value: Value) -> Value {
    let mut job = job();
    let (parent, key) = split(path);
    parent_object(&mut job, &parent).insert(key.to_owned(), value);
    job
}

/// The example job without `path`.
fn without(path: &str) -> Value {
    let mut job = job();
    let (parent, key) = split(path);
    parent_object(&mut job, &parent).remove(key).expect("the field was there");
    job
}

/// The JSON pointer of the object holding `path`'s last key, and that key.
fn split(path: &str) -> (String, &str) {
    match path.rsplit_once('/') {
        Some((parent, key)) => (format!("/{parent}"), key),
        None => (String::new(), path),
    }
}

fn parent_object<'a>(job: &'a mut Value, pointer: &str) -> &'a mut serde_json::Map<String, Value> {
    job.pointer_mut(pointer).and_then(Value::as_object_mut).expect("an object in the example job")
}

/// A message of `kind` with its object (an array for `contacts`).
fn message(kind: &str) -> Value {
    let content =
        if kind == "contacts" { json!([{ "name": { "formatted_name": "Ann" } }]) } else { json!({}) };
    json!({ "type": kind, kind: content })
}

fn valid_examples() -> Vec<(&'static str, Value)> {
    let mut examples = vec![
        ("the contract's example", job()),
        (
            "only the required fields",
            json!({
                "id": "j", "phone_number_id": "1", "to": "15551234567",
                "message": { "type": "text", "text": { "body": "hi" } }
            }),
        ),
        ("id of 128 characters", with("id", json!("x".repeat(128)))),
        ("id of 128 four-byte characters", with("id", json!("😀".repeat(128)))),
        ("phone_number_id of 19 digits", with("phone_number_id", json!("9999999999999999999"))),
        ("waba_id null", with("waba_id", Value::Null)),
        ("waba_id left out", without("waba_id")),
        ("to without +", with("to", json!("15551234567"))),
        ("to of 8 digits", with("to", json!("+12345678"))),
        ("to of 15 digits", with("to", json!("123456789012345"))),
        ("to with separators", with("to", json!("+1 (555) 123-45.67"))),
        ("to with whitespace around it", with("to", json!("\t\u{a0} +1 555 123 4567 \n"))),
        (
            "not_before with a fraction and an offset",
            with("not_before", json!("2026-11-21T10:00:00.125+02:00")),
        ),
        ("expires_at with lower-case t and z", with("expires_at", json!("2026-11-21t12:00:00z"))),
        ("not_before null", with("not_before", Value::Null)),
        ("priority high", with("priority", json!("high"))),
        ("priority normal", with("priority", json!("normal"))),
        ("priority bulk", with("priority", json!("bulk"))),
        ("priority null", with("priority", Value::Null)),
        ("metadata a number", with("metadata", json!(7))),
        ("metadata null", with("metadata", Value::Null)),
        ("campaign a string", with("campaign", json!("nov-shipping"))),
        ("campaign of 128 characters", with("campaign", json!("é".repeat(128)))),
        ("campaign null", with("campaign", Value::Null)),
        ("an unknown top-level field", with("x_producer", json!({ "batch": 3 }))),
        (
            "biz_opaque_callback_data of 512 characters",
            with("message/biz_opaque_callback_data", json!("é".repeat(512))),
        ),
        ("other message fields", with("message/context", json!({ "message_id": "wamid.x" }))),
        ("another type's field beside the typed object", with("message/image", json!("ignored"))),
    ];
    for kind in [
        "text",
        "template",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "reaction",
    ] {
        examples.push((kind, with("message", message(kind))));
    }
    examples
}

fn invalid_examples() -> Vec<(&'static str, Value)> {
    vec![
        ("not an object", json!("a job")),
        ("an empty array", json!([])),
        (
            "the fields as an array",
            json!(["a", "106540352242922", null, "15551234567", { "type": "text", "text": {} }]),
        ),
        ("campaign a number", with("campaign", json!(12))),
        ("campaign empty", with("campaign", json!(""))),
        ("campaign of 129 characters", with("campaign", json!("x".repeat(129)))),
        ("missing id", without("id")),
        ("missing phone_number_id", without("phone_number_id")),
        ("missing to", without("to")),
        ("missing message", without("message")),
        ("id empty", with("id", json!(""))),
        ("id of 129 characters", with("id", json!("x".repeat(129)))),
        ("id a number", with("id", json!(8812))),
        ("id null", with("id", Value::Null)),
        ("phone_number_id a number", with("phone_number_id", json!(106540352242922u64))),
        ("phone_number_id empty", with("phone_number_id", json!(""))),
        ("phone_number_id with a leading zero", with("phone_number_id", json!("0106540352242922"))),
        ("phone_number_id with a letter", with("phone_number_id", json!("10654035224292a"))),
        ("phone_number_id of 20 digits", with("phone_number_id", json!("10000000000000000000"))),
        ("waba_id with a sign", with("waba_id", json!("+102290129340398"))),
        ("waba_id a number", with("waba_id", json!(102290129340398u64))),
        ("to of 7 digits", with("to", json!("+1234567"))),
        ("to of 16 digits", with("to", json!("1234567890123456"))),
        ("to with a leading zero", with("to", json!("015551234567"))),
        ("to with a letter", with("to", json!("+1555x234567"))),
        ("to only +", with("to", json!("+"))),
        ("to with two +", with("to", json!("++15551234567"))),
        ("to with + inside parentheses", with("to", json!("(+1) 555 123 4567"))),
        ("to with a tab inside", with("to", json!("+1555\t1234567"))),
        ("to a number", with("to", json!(15551234567u64))),
        ("message a string", with("message", json!("hello"))),
        ("message null", with("message", Value::Null)),
        ("message without type", without("message/type")),
        ("message type a number", with("message/type", json!(1))),
        ("message type unknown", with("message/type", json!("sms"))),
        ("message type in capitals", with("message/type", json!("TEXT"))),
        ("typed object missing", without("message/text")),
        ("typed object a string", with("message/text", json!("hello"))),
        ("contacts an object", with("message", json!({ "type": "contacts", "contacts": {} }))),
        ("image an array", with("message", json!({ "type": "image", "image": [] }))),
        ("message with messaging_product", with("message/messaging_product", json!("whatsapp"))),
        ("message with to", with("message/to", json!("15551234567"))),
        (
            "biz_opaque_callback_data of 513 characters",
            with("message/biz_opaque_callback_data", json!("x".repeat(513))),
        ),
        ("biz_opaque_callback_data a number", with("message/biz_opaque_callback_data", json!(5))),
        ("priority unknown", with("priority", json!("urgent"))),
        ("priority in capitals", with("priority", json!("HIGH"))),
        ("priority a number", with("priority", json!(1))),
        ("not_before not a date", with("not_before", json!("tomorrow"))),
        ("not_before without an offset", with("not_before", json!("2026-11-21T10:00:00"))),
        ("not_before in month 13", with("not_before", json!("2026-13-21T10:00:00Z"))),
        ("expires_at a number", with("expires_at", json!(1_795_000_000))),
    ]
}

#[test]
fn schema_and_parser_agree_on_every_example() {
    let mut disagreements = Vec::new();
    let examples = valid_examples().into_iter().map(|(name, job)| (name, job, true));
    let examples = examples.chain(invalid_examples().into_iter().map(|(name, job)| (name, job, false)));
    for (name, job, expected) in examples {
        let by_schema = SCHEMA.is_valid(&job);
        let parsed = Job::parse(&serde_json::to_vec(&job).expect("serialise"), &ParseOptions::default());
        if by_schema != expected || parsed.is_ok() != expected {
            let parser = parsed.map_or_else(|e| format!("refused ({e})"), |_| "accepted".into());
            let schema = if by_schema { "accepted" } else { "refused" };
            let expected = if expected { "valid" } else { "invalid" };
            disagreements.push(format!("{name} ({expected}): schema {schema}, parser {parser}"));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn there_are_enough_examples_of_each_kind() {
    assert!(valid_examples().len() >= 10 && invalid_examples().len() >= 10);
}
