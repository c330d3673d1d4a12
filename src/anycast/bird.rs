//! BIRD 2's control socket, spoken directly: `enable` / `disable` / `show protocols` of one
//! protocol, nothing else.
//!
//! Why the socket and not `birdc`: the reply codes are the diagnosis (`0011 enabled`,
//! `0010 already enabled`, `8003 No protocols match`), a subprocess would hide them behind an
//! exit status and stderr text; the DNS image need not ship `birdc`; and every exchange is
//! bounded by one timeout we own. The protocol is line based: BIRD greets with `0001 … ready.`,
//! each command is one line, and each reply line starts with a four-digit code followed by `-`
//! (more lines follow) or a space (last line); a line starting with a space continues the
//! previous code, one starting with `+` is a spontaneous printout. Codes `0xxx` are success,
//! `1xxx`/`2xxx` table rows and headings, `8xxx` run-time and `9xxx` parse errors
//! (`doc/reply_codes` in BIRD's source).
//!
//! One connection per exchange: BIRD restarts are then invisible to us, and the socket is
//! touched once per check interval at most. Parsing is pure ([`parse_reply`]) and tested from
//! text; the IO ([`BirdControl`]) is tested against a scripted socket and, in
//! `tests/anycast.rs`, against a real BIRD.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// A reply longer than this is not one of the replies we ask for: stop reading.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Longest protocol name accepted (BIRD's own symbol limit is 64).
const MAX_PROTOCOL_NAME: usize = 64;

/// Why an exchange with BIRD failed. Comparable, so tests assert on the diagnosis.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BirdError {
    /// Nothing listens on the socket: BIRD is not running (and then announces nothing), or
    /// the path is wrong.
    #[error("cannot connect to BIRD's control socket {path}: {reason}")]
    Unreachable {
        path: PathBuf,
        kind: io::ErrorKind,
        reason: String,
    },
    #[error("BIRD's control socket {path}: no complete reply within {timeout:?}")]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("BIRD's control socket {path}: connection failed mid-exchange: {reason}")]
    Io { path: PathBuf, reason: String },
    /// BIRD answered with an error code (`8xxx` run-time, `9xxx` parse error).
    #[error("BIRD refused `{command}`: {code:04} {message}")]
    Rejected {
        command: String,
        code: u16,
        message: String,
    },
    /// A line that is not BIRD's reply syntax, or a reply that does not answer the command.
    #[error("BIRD's reply to `{command}` is not understood: {line:?}")]
    UnexpectedReply { command: String, line: String },
    #[error("{name:?} is not a BIRD protocol name Meridian can drive: {reason}")]
    InvalidProtocolName { name: String, reason: &'static str },
}

impl BirdError {
    /// The `error` label of `meridian_anycast_bird_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            BirdError::Unreachable { .. } => "unreachable",
            BirdError::TimedOut { .. } => "timeout",
            BirdError::Io { .. } => "io",
            BirdError::Rejected { .. } => "rejected",
            BirdError::UnexpectedReply { .. } => "unexpected_reply",
            BirdError::InvalidProtocolName { .. } => "invalid_protocol",
        }
    }

    /// BIRD is not running there: a BIRD that does not run announces nothing, so a withdrawal
    /// has nothing left to do.
    pub fn bird_not_running(&self) -> bool {
        matches!(
            self,
            BirdError::Unreachable {
                kind: io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused,
                ..
            }
        )
    }
}

/// Checks that `name` can be sent to BIRD as a quoted protocol pattern: a protocol name, or a
/// shell-style pattern with `*` and `?` (BIRD 2's `static` protocol has a single channel, so a
/// dual-stack PoP has two, e.g. `anycast_dns4` and `anycast_dns6`, driven together as
/// `anycast_dns*`). No quote, backslash, whitespace or control character (a newline would end
/// the command and start another), and at least one literal character: `*` alone would switch
/// off every BGP session of the PoP.
pub fn validate_protocol_name(name: &str) -> Result<(), BirdError> {
    let invalid = |reason| {
        Err(BirdError::InvalidProtocolName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_PROTOCOL_NAME {
        return invalid("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*' | b'?'))
    {
        return invalid(
            "only ASCII letters, digits, '_', '-', '.' and the patterns '*', '?' are allowed",
        );
    }
    if name.bytes().all(|b| matches!(b, b'*' | b'?')) {
        return invalid("a pattern without a literal character matches every protocol");
    }
    Ok(())
}

/// One reply line: its code (the previous line's for a continuation) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

/// Outcome of feeding one line to [`ReplyParser`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fed {
    More,
    Done,
}

/// Accumulates reply lines until the last one (a code followed by a space).
#[derive(Debug, Default)]
struct ReplyParser {
    lines: Vec<ReplyLine>,
    last_code: Option<u16>,
}

impl ReplyParser {
    fn feed(&mut self, line: &str) -> Result<Fed, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('+') {
            return Ok(Fed::More); // spontaneous printout (log lines), not part of the reply
        }
        if let Some(text) = line.strip_prefix(' ') {
            let code = self.last_code.ok_or_else(|| line.to_owned())?;
            self.lines.push(ReplyLine {
                code,
                text: text.to_owned(),
            });
            return Ok(Fed::More);
        }
        let bytes = line.as_bytes();
        if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(line.to_owned());
        }
        let code: u16 = line[..4].parse().map_err(|_| line.to_owned())?;
        let text = line[5..].to_owned();
        self.last_code = Some(code);
        self.lines.push(ReplyLine { code, text });
        match bytes[4] {
            b' ' => Ok(Fed::Done),
            b'-' => Ok(Fed::More),
            _ => Err(line.to_owned()),
        }
    }
}

/// Parses a complete reply (every line, newline-terminated). Pure: the socket code feeds the
/// same parser line by line.
pub fn parse_reply(text: &str) -> Result<Vec<ReplyLine>, String> {
    let mut parser = ReplyParser::default();
    for line in text.split_inclusive('\n') {
        if parser.feed(line)? == Fed::Done {
            return Ok(parser.lines);
        }
    }
    Err(format!("reply ended without a final line: {text:?}"))
}

/// The state of a protocol as `show protocols` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolStatus {
    pub name: String,
    /// `Static`, `BGP`, …
    pub proto: String,
    /// `up`, `down`, `start`, …: a disabled protocol is `down`.
    pub state: String,
}

/// What an `enable` or `disable` reply says about the protocol afterwards: `true` = enabled.
/// A pattern gets one line per protocol it matched; they all end in the same state.
fn switched_state(command: &str, lines: &[ReplyLine]) -> Result<bool, BirdError> {
    let mut state = None;
    for line in lines {
        match line.code {
            // 0008 already disabled, 0009 disabled, 0010 already enabled, 0011 enabled.
            8 | 9 => state = Some(false),
            10 | 11 => state = Some(true),
            _ => {}
        }
    }
    state.ok_or_else(|| BirdError::UnexpectedReply {
        command: command.to_owned(),
        line: lines.last().map(|l| l.text.clone()).unwrap_or_default(),
    })
}

/// The rows of a `show protocols` reply: `1002-name  Proto  Table  State  Since  Info`.
fn protocol_rows(command: &str, lines: &[ReplyLine]) -> Result<Vec<ProtocolStatus>, BirdError> {
    let rows: Vec<ProtocolStatus> = lines
        .iter()
        .filter(|l| l.code == 1002)
        .filter_map(|l| {
            let mut fields = l.text.split_whitespace();
            let name = fields.next()?;
            let proto = fields.next()?;
            let _table = fields.next()?;
            let state = fields.next()?;
            Some(ProtocolStatus {
                name: name.to_owned(),
                proto: proto.to_owned(),
                state: state.to_owned(),
            })
        })
        .collect();
    if rows.is_empty() {
        return Err(BirdError::UnexpectedReply {
            command: command.to_owned(),
            line: lines.last().map(|l| l.text.clone()).unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// The client end of BIRD's control socket.
#[derive(Clone, Debug)]
pub struct BirdControl {
    socket: PathBuf,
    timeout: Duration,
}

impl BirdControl {
    /// `timeout` bounds each whole exchange (connect, greeting, command, reply).
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> BirdControl {
        BirdControl {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `enable` (announce) or `disable` (withdraw) the protocol; returns the state BIRD reports
    /// afterwards (`true` = enabled), which is the same whether it changed or already was.
    pub async fn set_enabled(&self, protocol: &str, enabled: bool) -> Result<bool, BirdError> {
        validate_protocol_name(protocol)?;
        let verb = if enabled { "enable" } else { "disable" };
        let command = format!("{verb} \"{protocol}\"");
        let lines = self.exchange(&command).await?;
        switched_state(&command, &lines)
    }

    /// `show protocols "<protocol>"`: the protocols the name (or pattern) matches and their
    /// state. None matching is `Rejected` with code 8003.
    pub async fn protocol_status(&self, protocol: &str) -> Result<Vec<ProtocolStatus>, BirdError> {
        validate_protocol_name(protocol)?;
        let command = format!("show protocols \"{protocol}\"");
        let lines = self.exchange(&command).await?;
        protocol_rows(&command, &lines)
    }

    async fn exchange(&self, command: &str) -> Result<Vec<ReplyLine>, BirdError> {
        match tokio::time::timeout(self.timeout, self.exchange_unbounded(command)).await {
            Ok(result) => result,
            Err(_) => Err(BirdError::TimedOut {
                path: self.socket.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange_unbounded(&self, command: &str) -> Result<Vec<ReplyLine>, BirdError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|error| BirdError::Unreachable {
                    path: self.socket.clone(),
                    kind: error.kind(),
                    reason: error.to_string(),
                })?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let greeting = self.read_reply(&mut read, "(greeting)").await?;
        if greeting.last().map(|l| l.code) != Some(1) {
            return Err(BirdError::UnexpectedReply {
                command: "(greeting)".to_owned(),
                line: greeting.last().map(|l| l.text.clone()).unwrap_or_default(),
            });
        }
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| self.io_error(&e))?;
        let lines = self.read_reply(&mut read, command).await?;
        match lines.last() {
            Some(last) if last.code >= 8000 => Err(BirdError::Rejected {
                command: command.to_owned(),
                code: last.code,
                message: last.text.clone(),
            }),
            _ => Ok(lines),
        }
    }

    async fn read_reply(
        &self,
        read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
        command: &str,
    ) -> Result<Vec<ReplyLine>, BirdError> {
        let mut parser = ReplyParser::default();
        let mut line = String::new();
        let mut total = 0usize;
        loop {
            line.clear();
            let read_bytes = read
                .read_line(&mut line)
                .await
                .map_err(|e| self.io_error(&e))?;
            if read_bytes == 0 {
                return Err(BirdError::Io {
                    path: self.socket.clone(),
                    reason: "BIRD closed the connection before the end of its reply".to_owned(),
                });
            }
            total += read_bytes;
            if total > MAX_REPLY_BYTES {
                return Err(BirdError::UnexpectedReply {
                    command: command.to_owned(),
                    line: format!("reply longer than {MAX_REPLY_BYTES} bytes"),
                });
            }
            match parser.feed(&line) {
                Ok(Fed::Done) => return Ok(parser.lines),
                Ok(Fed::More) => {}
                Err(line) => {
                    return Err(BirdError::UnexpectedReply {
                        command: command.to_owned(),
                        line,
                    });
                }
            }
        }
    }

    fn io_error(&self, error: &io::Error) -> BirdError {
        BirdError::Io {
            path: self.socket.clone(),
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(code: u16, text: &str) -> ReplyLine {
        ReplyLine {
            code,
            text: text.to_owned(),
        }
    }

    #[test]
    fn replies_parse_as_bird_sends_them() {
        // Transcripts recorded from BIRD 2.0.12.
        let cases: &[(&str, Result<Vec<ReplyLine>, ()>)] = &[
            (
                "0001 BIRD 2.0.12 ready.\n",
                Ok(vec![line(1, "BIRD 2.0.12 ready.")]),
            ),
            (
                "0011-anycast_dns: enabled\n0000 \n",
                Ok(vec![line(11, "anycast_dns: enabled"), line(0, "")]),
            ),
            (
                "1000-BIRD 2.0.12\n1011-Router ID is 10.0.0.1\n Hostname is vm\n0013 Daemon is up and running\n",
                Ok(vec![
                    line(1000, "BIRD 2.0.12"),
                    line(1011, "Router ID is 10.0.0.1"),
                    line(1011, "Hostname is vm"),
                    line(13, "Daemon is up and running"),
                ]),
            ),
            (
                "+0000 a spontaneous log line\n8003 No protocols match\n",
                Ok(vec![line(8003, "No protocols match")]),
            ),
            ("0011-anycast_dns: enabled\n", Err(())),
            (" continuation first\n0000 \n", Err(())),
            ("hello\n", Err(())),
            ("0011xenabled\n", Err(())),
        ];
        for (text, expected) in cases {
            let parsed = parse_reply(text).map_err(|_| ());
            assert_eq!(&parsed, expected, "reply {text:?}");
        }
    }

    #[test]
    fn switch_replies_say_the_state_afterwards() {
        let cases: &[(&[ReplyLine], Option<bool>)] = &[
            (&[line(11, "p: enabled"), line(0, "")], Some(true)),
            (&[line(10, "p: already enabled"), line(0, "")], Some(true)),
            (&[line(9, "p: disabled"), line(0, "")], Some(false)),
            (&[line(8, "p: already disabled"), line(0, "")], Some(false)),
            (&[line(0, "")], None),
            (&[line(13, "Daemon is up and running")], None),
            (
                &[
                    line(11, "p4: enabled"),
                    line(10, "p6: already enabled"),
                    line(0, ""),
                ],
                Some(true),
            ),
        ];
        for (lines, expected) in cases {
            assert_eq!(
                switched_state("enable \"p\"", lines).ok(),
                *expected,
                "{lines:?}"
            );
        }
    }

    #[test]
    fn protocol_names_that_could_match_more_or_inject_are_refused() {
        for good in [
            "anycast_dns",
            "anycast-dns.v4",
            "A1",
            "anycast_dns*",
            "dns?",
        ] {
            assert_eq!(validate_protocol_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "*",
            "*?*",
            "a\"b",
            "a b",
            "a\nshow status",
            "a\\b",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    validate_protocol_name(bad),
                    Err(BirdError::InvalidProtocolName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn show_protocols_rows_are_read() {
        let lines = parse_reply(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-anycast_dns4 Static     master4    down   08:08:56.914  \n\
             1002-anycast_dns6 Static     master6    up     08:08:56.914  \n0000 \n",
        )
        .unwrap();
        let row = |name: &str, state: &str| ProtocolStatus {
            name: name.into(),
            proto: "Static".into(),
            state: state.into(),
        };
        assert_eq!(
            protocol_rows("show", &lines),
            Ok(vec![row("anycast_dns4", "down"), row("anycast_dns6", "up")])
        );
        assert!(protocol_rows("show", &parse_reply("0000 \n").unwrap()).is_err());
    }

    /// A scripted BIRD: answers each connection's command from `script` (command → reply).
    async fn scripted_bird(
        dir: &Path,
        script: Vec<(&'static str, &'static str)>,
    ) -> (PathBuf, tokio::task::JoinHandle<Vec<String>>) {
        let path = dir.join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (expected, reply) in script {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
                let mut read = BufReader::new(read);
                let mut command = String::new();
                read.read_line(&mut command).await.unwrap();
                seen.push(command.trim_end().to_owned());
                assert_eq!(command.trim_end(), expected);
                write.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (path, task)
    }

    #[tokio::test]
    async fn enable_and_disable_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bird) = scripted_bird(
            dir.path(),
            vec![
                (
                    "enable \"anycast_dns\"",
                    "0011-anycast_dns: enabled\n0000 \n",
                ),
                (
                    "disable \"anycast_dns\"",
                    "0008-anycast_dns: already disabled\n0000 \n",
                ),
                ("enable \"nosuch\"", "8003 No protocols match\n"),
            ],
        )
        .await;
        let control = BirdControl::new(&path, Duration::from_secs(5));
        assert_eq!(control.set_enabled("anycast_dns", true).await, Ok(true));
        assert_eq!(control.set_enabled("anycast_dns", false).await, Ok(false));
        assert_eq!(
            control.set_enabled("nosuch", true).await,
            Err(BirdError::Rejected {
                command: "enable \"nosuch\"".into(),
                code: 8003,
                message: "No protocols match".into()
            })
        );
        bird.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_socket_means_bird_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let control = BirdControl::new(dir.path().join("absent.ctl"), Duration::from_secs(5));
        let error = control.set_enabled("anycast_dns", false).await.unwrap_err();
        assert_eq!(error.label(), "unreachable");
        assert!(error.bird_not_running(), "{error}");
    }

    #[tokio::test]
    async fn a_silent_bird_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        // Accepts (the kernel queues the connection) and never greets.
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let control = BirdControl::new(&path, Duration::from_millis(100));
        assert_eq!(
            control.set_enabled("anycast_dns", true).await,
            Err(BirdError::TimedOut {
                path,
                timeout: Duration::from_millis(100)
            })
        );
    }
}
