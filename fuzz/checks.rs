//! What each fuzz target does with one input, shared by the cargo-fuzz targets
//! (`fuzz_targets/*.rs`) and the stable regression test (`tests/fuzz_regressions.rs`), so a
//! saved crash input is replayed through exactly the code that found it.
//!
//! Besides "no panic, no hang, no out-of-bounds read", each check asserts the contracts the
//! session relies on: framing consumes nothing until a whole message is there and returns
//! the same messages however the bytes are split; a classification's statement ranges point
//! into the SQL it was given.

use bytes::BytesMut;
use pgrelay::protocol::frame::{split_frame, HEADER_LEN};
use pgrelay::protocol::{startup, view, Frame};
use pgrelay::router::classify::{classify, ClassifyCache, FunctionCatalog};
use pgrelay::router::plan;

/// Largest message the framing check accepts (small, so lengths near the limit are found).
const MAX_MESSAGE: u64 = 1 << 16;

/// Runs every message view on a body; none may panic or read past it.
fn view_everything(body: &[u8]) {
    let _ = view::query_text(body);
    let _ = view::parse_message(body);
    let _ = view::bind_message(body);
    let _ = view::target_message(body);
    let _ = view::ready_status(body);
    let _ = view::parameter_status(body);
    let _ = view::is_commit(body);
    let _ = view::backend_key(body);
    let _ = view::first_column_text(body);
    let _ = view::error_fields(body);
    let _ = view::error_code(body);
}

/// Splits `buf` into frames the way the session does, checking each frame's header and that
/// an incomplete message leaves the buffer untouched.
fn frames_of(buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match split_frame(buf, MAX_MESSAGE) {
            Ok(Some(frame)) => {
                assert!(
                    frame.bytes.len() >= HEADER_LEN,
                    "frame shorter than its header"
                );
                assert_eq!(frame.bytes[0], frame.tag, "tag is the first byte");
                let declared = i32::from_be_bytes([
                    frame.bytes[1],
                    frame.bytes[2],
                    frame.bytes[3],
                    frame.bytes[4],
                ]);
                assert_eq!(declared as usize + 1, frame.bytes.len(), "frame length");
                assert_eq!(buf.len(), before - frame.bytes.len(), "consumed one frame");
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete message consumes nothing");
                return frames;
            }
            Err(_) => return frames,
        }
    }
}

/// `frontend_messages`: arbitrary client bytes through the startup parser, the framer and
/// every view.
pub fn frontend_messages(data: &[u8]) {
    // The startup packet, length-checked first as the frontend does.
    if let Some(prefix) = data.get(..4) {
        let prefix = [prefix[0], prefix[1], prefix[2], prefix[3]];
        if let Ok(len) = startup::packet_len(prefix) {
            if let Some(packet) = data.get(..len) {
                let _ = startup::parse(packet);
            }
        }
    }
    let _ = startup::parse(data);

    // The same bytes as one read, then as many small reads: same frames either way.
    let mut whole = BytesMut::from(data);
    let at_once = frames_of(&mut whole);
    for frame in &at_once {
        view_everything(frame.body());
    }
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut trickled = Vec::new();
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        trickled.extend(frames_of(&mut buf));
    }
    assert_eq!(at_once, trickled, "framing depends on how the bytes arrive");
}

/// `classify`: the input's longest UTF-8 prefix (what libFuzzer's `&str` inputs are) through
/// the classifier and the planner.
pub fn classify_bytes(data: &[u8]) {
    let sql = match std::str::from_utf8(data) {
        Ok(sql) => sql,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
    };
    classify_sql(sql);
}

/// Arbitrary SQL text through the classifier (plain and cached, with and without known write
/// functions) and the planner.
pub fn classify_sql(sql: &str) {
    let plain = FunctionCatalog::default();
    let with_functions = FunctionCatalog::new(
        &["app.bump".to_owned(), "audit".to_owned()],
        vec!["public.add_order".to_owned()],
    );
    for catalog in [&plain, &with_functions] {
        let c = classify(sql, catalog);
        for s in &c.statements {
            assert!(
                sql.get(s.range.clone()).is_some(),
                "statement range {:?} is not a slice of the {}-byte SQL",
                s.range,
                sql.len()
            );
        }
        let _ = plan(&c, sql, false);
        let _ = plan(&c, sql, true);
        let cached = ClassifyCache::new(16).classify(sql, catalog);
        assert_eq!(*cached, c, "the cache returns what classify returns");
    }
}
