//! `bladevisor console <guest> -i`: the guest's serial console, interactive. What it printed
//! lately comes first, then what it prints as it prints it; what is typed goes to the guest
//! (one operator types at a time, the others watch); Ctrl-] leaves.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use super::{ask, Cli};
use crate::api::client::{send, CallError};
use crate::proto::request::{ConsoleText, Done, Operator, Request};

/// Ctrl-]: leaves the console, as with virsh console.
pub const ESCAPE: u8 = 0x1d;

/// Puts the terminal in raw mode while it lives (keys go to the guest as typed), and back.
struct Raw(Option<nix::sys::termios::Termios>);

impl Raw {
    fn new() -> Raw {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Raw(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Raw(Some(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// What to send of a chunk typed: the bytes before Ctrl-], and whether it was typed.
pub fn split_escape(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|b| *b == ESCAPE) {
        Some(i) => (&chunk[..i], true),
        None => (chunk, false),
    }
}

pub fn interactive(cli: &Cli, name: &str) {
    let session = format!("{}-{}", std::process::id(), crate::logging::unix_ms());
    let ep = super::endpoint(cli);
    let token = cli.token.as_deref();
    eprintln!("bladevisor: console of {name} (Ctrl-] to leave)\r");
    let _raw = Raw::new();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(vec![ESCAPE]);
                    return;
                }
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut offset = 0u64;
    let mut told = false;
    loop {
        let c: ConsoleText = ask(cli, Operator::Console { name: name.to_string(), offset });
        let mut out = std::io::stdout();
        let _ = out.write_all(c.text.replace('\n', "\r\n").replace("\r\r\n", "\r\n").as_bytes());
        let _ = out.flush();
        offset = c.next;
        while let Ok(chunk) = rx.try_recv() {
            let (data, leave) = split_escape(&chunk);
            if !data.is_empty() {
                let op = Operator::ConsoleInput {
                    name: name.to_string(),
                    session: session.clone(),
                    who: String::new(),
                    data: data.to_vec(),
                };
                match send::<Done>(&ep, &Request::Operator(op), token, Duration::from_secs(10)) {
                    Ok(_) => told = false,
                    Err(CallError::Refused { code: 409, message }) if !told => {
                        eprint!("\r\nbladevisor: {message}\r\n");
                        told = true;
                    }
                    Err(CallError::Refused { code: 409, .. }) => {}
                    Err(e) => eprint!("\r\nbladevisor: {e}\r\n"),
                }
            }
            if leave {
                let op = Operator::ConsoleDetach { name: name.to_string(), session: session.clone() };
                let _ = send::<Done>(&ep, &Request::Operator(op), token, Duration::from_secs(10));
                eprint!("\r\nbladevisor: left the console of {name}\r\n");
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_close_bracket_leaves_and_what_came_before_it_is_typed() {
        assert_eq!(split_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_escape(b"q\x1drest"), (&b"q"[..], true));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
    }
}
