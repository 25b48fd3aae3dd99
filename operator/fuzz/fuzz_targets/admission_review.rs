//! Arbitrary bytes as an AdmissionReview body: decoding, the opt-in decision and the patch
//! builder must never panic, and every patch they produce must apply to the pod.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    lameduck_operator::webhook::fuzzing::check_review(body);
});
