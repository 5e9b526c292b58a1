//! Registry record decoding: whatever a store hands back (another version's record, a value
//! someone else wrote under the key, garbage), `SessionRecord::from_json` never panics, and a
//! record it accepts encodes to JSON that decodes to the same record and encodes the same
//! again (so a record read, compared and written back never drifts).
//!
//! Input: the stored value. Also, from the same bytes, a record built field by field (node,
//! incarnation, created-at) must survive `to_json` → `from_json` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_affinity::registry::{Ownership, SessionRecord};
use mcp_affinity_fuzz::json_value;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        decoded_is_stable(text);
    }
    built_round_trips(input);
});

fn decoded_is_stable(text: &str) {
    let Ok(record) = SessionRecord::from_json(text) else {
        return;
    };
    // What was accepted is JSON: an object with the three fields, well typed.
    match json_value(text.as_bytes()) {
        Ok(Some(v)) => {
            assert_eq!(
                v.get("n").and_then(Value::as_str),
                Some(record.node.as_str())
            );
            assert_eq!(
                v.get("i").and_then(Value::as_str),
                Some(record.incarnation.as_str())
            );
            assert_eq!(v.get("c").and_then(Value::as_u64), Some(record.created_at));
        }
        // Valid JSON with a number no `Value` holds (in a field the record ignores).
        Ok(None) => {}
        Err(e) => panic!("not JSON ({e}) accepted as a record: {text:?}"),
    }
    let json = record.to_json();
    let again = SessionRecord::from_json(&json).expect("an encoded record decodes");
    assert_eq!(again, record);
    assert_eq!(again.to_json(), json);
    assert_eq!(
        record.ownership(&record.node, &record.incarnation),
        Ownership::Current
    );
    assert!(record.is_owned_by(&record.node, &record.incarnation));
}

fn built_round_trips(input: &[u8]) {
    // node \0 incarnation \0 8 bytes of created-at
    let mut parts = input.splitn(3, |&b| b == 0);
    let node = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let incarnation = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let created_at = parts
        .next()
        .and_then(|c| c.first_chunk::<8>())
        .map_or(0, |c| u64::from_be_bytes(*c));
    let record =
        SessionRecord::new(node.as_ref(), incarnation.as_ref()).with_created_at(created_at);
    let json = record.to_json();
    assert!(!json.is_empty(), "a record always encodes");
    let back = SessionRecord::from_json(&json).expect("an encoded record decodes");
    assert_eq!(back, record);
    assert_eq!(back.to_json(), json);
    let other = format!("{node}\u{1}");
    assert_eq!(record.ownership(&other, &incarnation), Ownership::OtherNode);
    if incarnation != "x" {
        assert_eq!(record.ownership(&node, "x"), Ownership::PreviousIncarnation);
    }
}
