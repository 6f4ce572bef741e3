//! Fuzzes the request decoder: for any bytes it must return requests or an
//! error response, never panic, and whatever it returns must serialise.
#![no_main]

use banger_proto::jsonrpc::{decode, encode_responses, Incoming, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Err(resp) => {
            let _ = encode_responses(&[resp], false);
        }
        Ok(Incoming::Single(r)) => check(r),
        Ok(Incoming::Batch(items)) => {
            assert!(!items.is_empty());
            for r in items {
                check(r);
            }
        }
    }
});

fn check(r: Result<banger_proto::jsonrpc::Request, Response>) {
    match r {
        Ok(req) => {
            assert!(req.params.is_null() || req.params.is_object() || req.params.is_array());
        }
        Err(resp) => {
            let line = encode_responses(&[resp], false);
            let _: serde_json::Value = serde_json::from_slice(&line).expect("responses are JSON");
        }
    }
}
