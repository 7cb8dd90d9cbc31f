//! Fuzzes the job parser with arbitrary record values: it must never panic,
//! and whatever it accepts must round-trip and build a valid request body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wabulk_model::{Job, ParseOptions};

fuzz_target!(|data: &[u8]| {
    let options = ParseOptions::default();
    let Ok(job) = Job::parse(data, &options) else { return };
    let again = Job::parse(&serde_json::to_vec(&job).expect("a job serialises"), &options)
        .expect("a parsed job parses again");
    assert_eq!(job, again);
    let body: serde_json::Value = serde_json::from_slice(&job.request_body()).expect("the body is JSON");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["to"], job.to.to_string());
});
