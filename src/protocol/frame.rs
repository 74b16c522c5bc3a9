//! Framing: split a byte stream into whole messages without looking inside them.
//!
//! A frame is the complete message as it arrived (tag, length, body) in one `Bytes`, so it can
//! be forwarded with no copy. Lengths are checked before anything is allocated for the body:
//! a peer can never make pgrelay reserve more than `max_message_size`.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Tag (1 byte) plus length (4 bytes).
pub const HEADER_LEN: usize = 5;

/// One whole protocol message, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {length} for message type {tag:?}")]
    BadLength { tag: char, length: i64 },
    #[error("message of type {tag:?} is {length} bytes, over the limit of {max} bytes")]
    TooLarge { tag: char, length: u64, max: u64 },
}

/// What the header at the front of a buffer says, once its five bytes are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole message length including the tag byte.
    pub total_len: usize,
}

/// Reads the header at `buf[at..]` if its five bytes are present, checking the length.
pub fn peek_header(
    buf: &[u8],
    at: usize,
    max_message_size: u64,
) -> Result<Option<Header>, FrameError> {
    let Some(head) = buf.get(at..at + HEADER_LEN) else {
        return Ok(None);
    };
    let tag = head[0];
    let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if length < 4 {
        return Err(FrameError::BadLength {
            tag: char::from(tag),
            length: i64::from(length),
        });
    }
    let length = length as u64;
    if length > max_message_size {
        return Err(FrameError::TooLarge {
            tag: char::from(tag),
            length,
            max: max_message_size,
        });
    }
    Ok(Some(Header {
        tag,
        total_len: length as usize + 1,
    }))
}

/// Splits one whole frame off the front of `buf`, or returns `None` when more bytes are needed
/// (after reserving room for the rest of the message, so the next read can complete it).
pub fn split_frame(buf: &mut BytesMut, max_message_size: u64) -> Result<Option<Frame>, FrameError> {
    let Some(header) = peek_header(buf, 0, max_message_size)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len {
        buf.reserve(header.total_len - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(header.total_len).freeze();
    Ok(Some(Frame {
        tag: header.tag,
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_pipelined_messages_one_at_a_time() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Q', b"select 1\0"));
        buf.extend_from_slice(&msg(b'S', b""));
        let a = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(a.tag, b'Q');
        assert_eq!(a.body(), b"select 1\0");
        let b = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(b.tag, b'S');
        assert_eq!(b.body(), b"");
        assert!(split_frame(&mut buf, 1024).unwrap().is_none());
    }

    #[test]
    fn partial_message_waits_for_more_bytes() {
        let whole = msg(b'Q', b"select 42\0");
        let mut buf = BytesMut::from(&whole[..7]);
        assert!(split_frame(&mut buf, 1024).unwrap().is_none());
        assert_eq!(buf.len(), 7, "nothing consumed");
        buf.extend_from_slice(&whole[7..]);
        assert_eq!(
            split_frame(&mut buf, 1024).unwrap().unwrap().bytes,
            &whole[..]
        );
    }

    #[test]
    fn header_only_split_across_reads() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0][..]);
        assert!(split_frame(&mut buf, 1024).unwrap().is_none());
    }

    #[test]
    fn length_below_four_is_refused() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(FrameError::BadLength { length: 3, .. })
        ));
        let mut neg = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut neg, 1024),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn length_over_limit_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(
            split_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn peek_header_at_offset() {
        let mut v = msg(b'Z', b"I");
        v.extend_from_slice(&msg(b'D', b"\0\0"));
        let h = peek_header(&v, 6, 100).unwrap().unwrap();
        assert_eq!(h.tag, b'D');
        assert_eq!(h.total_len, 7);
    }
}
