//! SSE encoding: an event the transport encodes, read back by a parser that follows the WHATWG
//! algorithm, is one `message` event with the same data (line breaks as LF, all an SSE `data`
//! field can carry of them) and the same event id.
//!
//! Input: 8 bytes of event id (stream, seq; big endian) when the first byte is odd, then the
//! data (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_affinity::__fuzz::{encode_event, parse_event_id};
use mcp_affinity_fuzz::{normalize_line_breaks, parse_sse};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (id, data) = match rest.split_first_chunk::<8>() {
        Some((id, data)) if flags & 1 == 1 => {
            let stream = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            let seq = u32::from_be_bytes([id[4], id[5], id[6], id[7]]);
            (Some((stream, seq)), data)
        }
        _ => (None, rest),
    };
    let data = String::from_utf8_lossy(data);
    let encoded = encode_event(id, data.as_bytes());
    assert!(
        encoded.ends_with(b"\n\n"),
        "an event ends with an empty line"
    );

    let (events, retry) = parse_sse(&encoded);
    assert_eq!(retry, None);
    let want = normalize_line_breaks(&data);
    // Even empty data is one event: one `data:` line puts an LF into the data buffer.
    assert_eq!(events.len(), 1, "one event for {data:?}: {events:?}");
    for event in &events {
        assert_eq!(event.event, "message");
        assert_eq!(event.data, want, "data of {data:?} (encoded {encoded:?})");
        match id {
            Some(id) => assert_eq!(parse_event_id(&event.last_event_id), Some(id)),
            None => assert_eq!(event.last_event_id, ""),
        }
    }
    // JSON survives: its line breaks are whitespace between tokens.
    if let Ok(sent) = serde_json::from_str::<serde_json::Value>(&data)
        && let Some(event) = events.first()
    {
        let got: serde_json::Value = serde_json::from_str(&event.data).expect("the JSON sent");
        assert_eq!(got, sent);
    }

    // `Last-Event-ID` as the transport reads it: an id it wrote reads back as that id.
    if let Some((stream, seq)) = id {
        assert_eq!(
            parse_event_id(&format!("{stream}-{seq}")),
            Some((stream, seq))
        );
    }
    // Any other string: whatever parses is `<u32>-<u32>`.
    if let Some((stream, seq)) = parse_event_id(&data) {
        let (a, b) = data.split_once('-').expect("a dash");
        assert_eq!(
            (a.parse::<u32>().ok(), b.parse::<u32>().ok()),
            (Some(stream), Some(seq))
        );
    }
});
