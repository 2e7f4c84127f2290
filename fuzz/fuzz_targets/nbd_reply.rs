//! An NBD server's bytes as the image backup's client reads them (a
//! hostile or broken export): any bytes give a handshake, reads and
//! block statuses, or an error; never a panic, a hang or an allocation
//! the bytes do not back.
//!
//! Layout: the server's whole side of the conversation; the client's
//! requests go nowhere.
#![no_main]

use std::io::{Cursor, Read, Write};

use hoard_nbd::{Client, wire};
use libfuzzer_sys::fuzz_target;

struct Scripted(Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The parsers on their own.
    if data.len() >= 2 {
        let ty = u16::from_be_bytes([data[0], data[1]]);
        let _ = wire::decode_chunk(ty, &data[2..]);
    }
    let _ = wire::decode_reply_header(data);
    let _ = wire::decode_info(data);
    // A whole conversation.
    let stream = Box::new(Scripted(Cursor::new(data.to_vec())));
    let contexts = ["base:allocation".to_string(), "qemu:dirty-bitmap:b".to_string()];
    if let Ok(mut c) = Client::handshake(stream, "disk", &contexts) {
        let len = c.size().min(1 << 16) as usize;
        let _ = c.read(0, len);
        let _ = c.block_status("base:allocation", 0, c.size().min(1 << 20));
        let _ = c.block_status("qemu:dirty-bitmap:b", 0, c.size().min(1 << 20));
    }
});
