//! The packet decoder on arbitrary bytes: split the input into packets as
//! the server's reader does, decode each, and check that whatever decodes
//! re-encodes to a packet of the announced length. Must never panic.
#![no_main]

use bytes::Bytes;
use hoard_protocol::{check_frame, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(header)) = check_frame(rest) {
        let len = header.length as usize;
        if rest.len() < len {
            break;
        }
        let payload = Bytes::copy_from_slice(&rest[6..len]);
        if let Ok(msg) = Message::decode(&header, payload) {
            if !matches!(msg, Message::Error { .. }) {
                assert_eq!(msg.encoded_len(), len);
                assert_eq!(&msg.encode(header.stream)[..], &rest[..len]);
            }
        }
        rest = &rest[len..];
    }
});
