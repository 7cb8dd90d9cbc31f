use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn parse(value: &Value) -> Result<Job, JobError> {
    Job::parse(&serde_json::to_vec(value).unwrap(), &ParseOptions::default())
}

fn valid() -> Value {
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

fn error_text(value: &Value) -> String {
    parse(value).unwrap_err().to_string()
}

#[test]
fn contract_example_parses() {
    let job = parse(&valid()).unwrap();
    assert_eq!(job.id, "order-8812-confirm");
    assert_eq!(job.phone_number_id.get(), 106540352242922);
    assert_eq!(job.to.to_string(), "15551234567");
    assert_eq!(job.not_before.unwrap().to_rfc3339(), "2026-11-21T10:00:00+00:00");
    assert_eq!(job.metadata, Some(json!({ "campaign": "nov-shipping" })));
}

#[test]
fn request_body_adds_engine_fields() {
    let body: Value = serde_json::from_slice(&parse(&valid()).unwrap().request_body()).unwrap();
    assert_eq!(
        body,
        json!({
            "messaging_product": "whatsapp",
            "to": "15551234567",
            "type": "text",
            "text": { "body": "Your order shipped" },
            "biz_opaque_callback_data": "order-8812-confirm"
        })
    );
}

#[test]
fn request_body_keeps_the_jobs_own_callback_data() {
    let mut job = valid();
    job["message"]["biz_opaque_callback_data"] = json!("mine");
    let body: Value = serde_json::from_slice(&parse(&job).unwrap().request_body()).unwrap();
    assert_eq!(body["biz_opaque_callback_data"], "mine");
}

#[test]
fn missing_field_is_named() {
    let mut job = valid();
    job.as_object_mut().unwrap().remove("to");
    let text = error_text(&job);
    assert!(text.starts_with("missing field `to`"), "{text}");
}

#[test]
fn wrong_type_names_the_field() {
    let mut job = valid();
    job["phone_number_id"] = json!(106540352242922u64);
    let text = error_text(&job);
    assert!(text.starts_with("phone_number_id: invalid type: integer"), "{text}");
}

#[test]
fn bad_values_name_field_and_reason() {
    let cases = [
        ("id", json!(""), "field `id`: has 0 characters; 1 to 128 are allowed"),
        ("id", json!("x".repeat(129)), "field `id`: has 129 characters; 1 to 128 are allowed"),
        ("to", json!("+1555"), "field `to`: has 4 digits; 8 to 15 are allowed"),
        ("to", json!("+1555abc4567"), "field `to`: must contain only digits, found 'a'"),
        ("phone_number_id", json!("12a"), "field `phone_number_id`: must contain only digits, found 'a'"),
        ("waba_id", json!("0123"), "field `waba_id`: must not start with 0"),
        (
            "message",
            json!({ "type": "text" }),
            "field `message`: type is \"text\" but `text` is missing or not an object",
        ),
        ("message", json!({ "type": "fax", "fax": {} }), "field `message`: unknown type \"fax\""),
        ("message", json!({ "text": {} }), "field `message`: missing `type`"),
        (
            "message",
            json!({ "type": "text", "text": {}, "to": "1" }),
            "field `message`: must not contain `to`",
        ),
        (
            "message",
            json!({ "type": "contacts", "contacts": {} }),
            "field `message`: type is \"contacts\" but `contacts` is missing or not an array",
        ),
    ];
    for (field, value, expected) in cases {
        let mut job = valid();
        job[field] = value;
        let text = error_text(&job);
        assert!(text.starts_with(expected), "{field}: got {text:?}, expected {expected:?}");
        assert_eq!(parse(&job).unwrap_err().reason(), "invalid_field");
    }
}

#[test]
fn bad_timestamp_names_the_field() {
    let mut job = valid();
    job["not_before"] = json!("tomorrow");
    assert!(error_text(&job).starts_with("not_before: "), "{}", error_text(&job));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let bytes = vec![b' '; 100];
    let err = Job::parse(&bytes, &ParseOptions { max_bytes: 99 }).unwrap_err();
    assert_eq!(err.to_string(), "job is 100 bytes, over the limit of 99 bytes");
    assert_eq!(err.reason(), "too_large");
}

#[test]
fn invalid_utf8_and_not_json_are_reported() {
    let err = Job::parse(b"{\"id\":\"\xff\"}", &ParseOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "job is not UTF-8: invalid byte at offset 7");
    let err = Job::parse(b"not json", &ParseOptions::default()).unwrap_err();
    assert_eq!(err.reason(), "malformed");
    assert!(err.to_string().contains("line 1 column"), "{err}");
    let err = Job::parse(b"{} {}", &ParseOptions::default()).unwrap_err();
    assert_eq!(err.reason(), "malformed");
}

#[test]
fn unknown_top_level_fields_are_ignored() {
    let mut job = valid();
    job["lane"] = json!("fast");
    assert!(parse(&job).is_ok());
}

#[test]
fn priority_is_one_of_three_lanes_and_survives_a_round_trip() {
    assert_eq!(parse(&valid()).unwrap().priority, Priority::Normal);
    for priority in Priority::ALL {
        let mut job = valid();
        job["priority"] = json!(priority.label());
        let parsed = parse(&job).unwrap();
        assert_eq!(parsed.priority, priority);
        let again = Job::parse(&parsed.to_json(), &ParseOptions::default()).unwrap();
        assert_eq!(again.priority, priority, "a parked job keeps its lane");
    }
    let mut job = valid();
    job["priority"] = json!("urgent");
    let err = parse(&job).unwrap_err();
    assert_eq!(err.reason(), "invalid_field");
    assert!(err.to_string().contains("priority") && err.to_string().contains("\"bulk\""), "{err}");
    job["priority"] = json!(1);
    assert_eq!(parse(&job).unwrap_err().reason(), "malformed");
}

fn arb_job() -> impl Strategy<Value = Value> {
    (
        "[a-zA-Z0-9_-]{1,128}",
        1u64..=9_999_999_999_999_999_999,
        proptest::option::of(1u64..=u64::MAX / 2),
        10_000_000u64..=999_999_999_999_999,
        ".{0,64}",
        proptest::option::of(0i64..4_000_000_000),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(|(id, phone, waba, to, body, not_before, meta)| {
            let mut job = json!({
                "id": id,
                "phone_number_id": phone.to_string(),
                "to": format!("+{to}"),
                "message": { "type": "text", "text": { "body": body } },
            });
            if let Some(waba) = waba {
                job["waba_id"] = json!(waba.to_string());
            }
            if let Some(secs) = not_before {
                job["not_before"] = json!(DateTime::from_timestamp(secs, 0).unwrap().to_rfc3339());
            }
            if let Some(meta) = meta {
                job["metadata"] = json!({ "n": meta });
            }
            job
        })
}

proptest! {
    #[test]
    fn no_bytes_make_the_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Job::parse(&bytes, &ParseOptions::default());
    }

    #[test]
    fn mutated_valid_jobs_never_panic(job in arb_job(), at in 0usize..400, byte in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&job).unwrap();
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = Job::parse(&bytes, &ParseOptions::default());
    }

    #[test]
    fn valid_jobs_round_trip(job in arb_job()) {
        let parsed = parse(&job).unwrap();
        let again = Job::parse(&serde_json::to_vec(&parsed).unwrap(), &ParseOptions::default()).unwrap();
        prop_assert_eq!(&parsed, &again);
        prop_assert_eq!(parsed.to.to_string(), job["to"].as_str().unwrap().trim_start_matches('+'));
    }
}

#[test]
fn a_job_written_back_reads_the_same() {
    let text = br#"{"id":"j-1","phone_number_id":"106540352242922","waba_id":"102290129340398",
        "to":"+15551234567","message":{"type":"text","text":{"body":"hi"}},
        "not_before":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00.250Z",
        "metadata":{"campaign":"c"}}"#;
    let job = Job::parse(text, &ParseOptions::default()).unwrap();
    assert_eq!(Job::parse(&job.to_json(), &ParseOptions::default()).unwrap(), job);
}
