//! An SMTP server for development and tests: a tokio TCP server that speaks enough of RFC 5321
//! (EHLO/HELO, MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT) for any client, stores each
//! message it accepts, and has switches to misbehave: refuse connections (down), answer
//! 4xx to the next N transactions, 5xx to given recipients, and hold its reply to DATA
//! (a message is accepted only when that reply is written; a client that goes away while
//! it is held has sent nothing).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message: the envelope and the DATA as received (dot-unstuffed, CRLF).
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    fn head(&self) -> &str {
        self.data.split("\r\n\r\n").next().unwrap_or_default()
    }

    /// A header's value, unfolded (first occurrence, name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(self.head(), name)
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    pub fn message_id(&self) -> String {
        self.header("Message-ID").unwrap_or_default()
    }

    /// The decoded body of the first part whose type starts with `content_type`, with
    /// LF line ends.
    pub fn part(&self, content_type: &str) -> Option<String> {
        let ct = self.header("Content-Type")?;
        let boundary = ct.split("boundary=").nth(1)?.trim_matches('"').to_string();
        let body = self.data.split_once("\r\n\r\n")?.1;
        for part in body.split(&format!("--{boundary}")) {
            let Some((head, content)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            let part_type = header_in(head, "Content-Type").unwrap_or_default();
            if !part_type.starts_with(content_type) {
                continue;
            }
            let encoding = header_in(head, "Content-Transfer-Encoding").unwrap_or_default();
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            let decoded = if encoding.eq_ignore_ascii_case("quoted-printable") {
                decode_qp(content)
            } else {
                content.to_string()
            };
            return Some(decoded.replace("\r\n", "\n"));
        }
        None
    }

    pub fn text(&self) -> String {
        self.part("text/plain").unwrap_or_default()
    }

    pub fn html(&self) -> String {
        self.part("text/html").unwrap_or_default()
    }
}

fn header_in(head: &str, name: &str) -> Option<String> {
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Mail>>,
    down: AtomicBool,
    fail_next: AtomicUsize,
    reject: Mutex<HashSet<String>>,
    slow_data: Mutex<Duration>,
    held: AtomicUsize,
    transactions: AtomicUsize,
}

/// The sink; its task ends with the runtime.
#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    state: Arc<State>,
}

impl SmtpSink {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    if state.down.load(Ordering::SeqCst) {
                        drop(socket);
                        continue;
                    }
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = session(socket, state).await;
                    });
                }
            });
        }
        Ok(SmtpSink { port, state })
    }

    /// `SMTP_URL` for the binary.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn messages(&self) -> Vec<Mail> {
        self.state.messages.lock().expect("sink state lock").clone()
    }

    pub fn count(&self) -> usize {
        self.state.messages.lock().expect("sink state lock").len()
    }

    /// Refuse connections (close them before the greeting) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Answer `451` to the next `n` MAIL FROM commands.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answer `550` to RCPT TO for this address.
    pub fn reject(&self, address: &str) {
        self.state
            .reject
            .lock()
            .expect("sink state lock")
            .insert(address.to_lowercase());
    }

    /// Hold each reply to DATA this long (zero: answer at once).
    pub fn set_slow_data(&self, hold: Duration) {
        *self.state.slow_data.lock().expect("sink state lock") = hold;
    }

    /// Messages whose DATA arrived and whose reply is being held.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// MAIL FROM commands seen (accepted or not).
    pub fn transactions(&self) -> usize {
        self.state.transactions.load(Ordering::SeqCst)
    }
}

fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => &arg[a + 1..b],
        _ => arg.split_whitespace().next().unwrap_or_default(),
    };
    inner.to_string()
}

async fn session(socket: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']).to_string();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => "250-sink.test\r\n250-8BITMIME\r\n250 SIZE 10485760".into(),
            "HELO" => "250 sink.test".into(),
            "MAIL" => {
                state.transactions.fetch_add(1, Ordering::SeqCst);
                let failing = state
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    "451 4.3.0 try again later".into()
                } else {
                    let arg = command.split_once(':').map(|x| x.1).unwrap_or_default();
                    from = Some(address(arg));
                    to.clear();
                    "250 2.1.0 ok".into()
                }
            }
            "RCPT" if from.is_none() => "503 5.5.1 MAIL first".into(),
            "RCPT" => {
                let arg = command.split_once(':').map(|x| x.1).unwrap_or_default();
                let rcpt = address(arg);
                if state
                    .reject
                    .lock()
                    .expect("sink state lock")
                    .contains(&rcpt.to_lowercase())
                {
                    "550 5.1.1 no such mailbox".into()
                } else {
                    to.push(rcpt);
                    "250 2.1.5 ok".into()
                }
            }
            "DATA" if to.is_empty() => "503 5.5.1 RCPT first".into(),
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                let hold = *state.slow_data.lock().expect("sink state lock");
                if !hold.is_zero() {
                    state.held.fetch_add(1, Ordering::SeqCst);
                    line.clear();
                    let gone = tokio::select! {
                        _ = tokio::time::sleep(hold) => false,
                        r = reader.read_line(&mut line) => matches!(r, Ok(0) | Err(_)),
                    };
                    state.held.fetch_sub(1, Ordering::SeqCst);
                    if gone {
                        return Ok(());
                    }
                }
                write.write_all(b"250 2.0.0 queued\r\n").await?;
                write.flush().await?;
                let mail = Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                };
                state.messages.lock().expect("sink state lock").push(mail);
                continue;
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 ok".into()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not implemented".into(),
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
