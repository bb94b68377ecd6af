//! A chat template: a Jinja program from a downloaded file, so every
//! rendering is bounded. In this process minijinja counts its instructions
//! ([`TEMPLATE_FUEL`]), its nesting and the bytes it writes; what it cannot
//! count is memory held in values (a string concatenated with itself forty
//! times) or time spent copying them. An application that renders templates
//! it did not write runs them in a child process instead
//! ([`isolate_templates`]): the child limits its own memory
//! ([`TEMPLATE_MEMORY`], see [`render_request`]) and is killed after
//! [`TEMPLATE_SECONDS`]; either way a template that exceeds a bound is
//! [`Error::ChatTemplate`] with the reason.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use minijinja::Environment;

use super::Message;
use crate::error::{Error, Result};

/// A compiled chat template with the special tokens it may write.
#[derive(Debug)]
pub(super) struct Template {
    env: Environment<'static>,
    source: String,
    /// BOS and EOS as text, for templates that write `bos_token` / `eos_token`.
    pub(super) bos: String,
    pub(super) eos: String,
}

impl Template {
    /// Compiles `source`: an error if it does not parse.
    pub(super) fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.add_filter("batch", bounded_batch);
        // Templates that print today's date (Llama 3.1's) get it.
        env.add_function("strftime_now", |format: String| {
            let now = std::time::SystemTime::now();
            let days = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 86400);
            strftime_date(days as i64, &format)
        });
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos,
            eos,
        })
    }

    /// `messages` as the template renders them, with the assistant's turn
    /// opened when `add_generation_prompt`: in a child process when
    /// [`isolate_templates`] named one, else here.
    pub(super) fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let child = ISOLATION.read().unwrap_or_else(|e| e.into_inner()).clone();
        match child {
            Some(child) => {
                let request = self.request(messages, add_generation_prompt);
                render_in_child(&child, &request)
            }
            None => self.render_here(messages, add_generation_prompt),
        }
    }

    fn render_here(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        let mut out = Capped(Vec::new());
        let rendered = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.0)
                .map_err(|_| Error::ChatTemplate("it rendered invalid UTF-8".into())),
            Err(_) if out.0.len() > TEMPLATE_OUTPUT => Err(Error::ChatTemplate(format!(
                "it rendered more than {TEMPLATE_OUTPUT} bytes"
            ))),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::ChatTemplate(
                format!("it ran more than {TEMPLATE_FUEL} instructions"),
            )),
            Err(e) => Err(Error::ChatTemplate(e.to_string())),
        }
    }

    /// The rendering as bytes for [`render_request`]: length-prefixed
    /// strings (source, BOS, EOS, then role and content of each message)
    /// after one byte for `add_generation_prompt`.
    fn request(&self, messages: &[Message], add_generation_prompt: bool) -> Vec<u8> {
        let mut out = vec![add_generation_prompt as u8];
        let mut put = |s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        put(&self.source);
        put(&self.bos);
        put(&self.eos);
        for m in messages {
            put(&m.role);
            put(&m.content);
        }
        out
    }
}

/// A program that renders templates: run with its arguments, it reads one
/// request on standard input and answers as [`render_request`] says.
#[derive(Clone, Debug)]
struct Isolation {
    program: PathBuf,
    args: Vec<OsString>,
}

static ISOLATION: RwLock<Option<Isolation>> = RwLock::new(None);

/// From now on, every chat template of this process renders in a child
/// process: `program` with `args`, which must read the request on its
/// standard input, pass it to [`render_request`] after limiting its own
/// memory to [`TEMPLATE_MEMORY`], write the text to standard output and
/// exit 0, or write the error to standard error and exit
/// [`TEMPLATE_REFUSED`]. The `kvgpu` tool is such a program
/// (`kvgpu render-template`) and isolates its templates so.
pub fn isolate_templates(program: impl Into<PathBuf>, args: &[&str]) {
    let isolation = Isolation {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
    };
    *ISOLATION.write().unwrap_or_else(|e| e.into_inner()) = Some(isolation);
}

/// The child's side of [`isolate_templates`]: renders one request.
pub fn render_request(request: &[u8]) -> Result<String> {
    let bad = || Error::ChatTemplate("malformed template request".into());
    let (&flag, mut rest) = request.split_first().ok_or_else(bad)?;
    let mut strings = Vec::new();
    while !rest.is_empty() {
        let n = rest.get(..8).ok_or_else(bad)?;
        let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
        let n = usize::try_from(n).map_err(|_| bad())?;
        let s = rest.get(8..).and_then(|r| r.get(..n)).ok_or_else(bad)?;
        strings.push(std::str::from_utf8(s).map_err(|_| bad())?);
        rest = &rest[8 + n..];
    }
    if strings.len() < 3 || strings.len() % 2 != 1 {
        return Err(bad());
    }
    let template = Template::new(strings[0], strings[1].into(), strings[2].into())?;
    let messages: Vec<Message> = strings[3..]
        .chunks(2)
        .map(|m| Message::new(m[0], m[1]))
        .collect();
    template.render_here(&messages, flag != 0)
}

/// Runs one request in `child`: its text, or why it failed.
fn render_in_child(child: &Isolation, request: &[u8]) -> Result<String> {
    let failed = |what: String| Error::ChatTemplate(what);
    let mut process = Command::new(&child.program)
        .args(&child.args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", child.program.display())))?;
    let mut stdin = process.stdin.take().expect("piped");
    let request = request.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&request));
    let read_capped = |pipe: Box<dyn Read + Send>, cap: usize| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            pipe.take(cap as u64 + 1).read_to_end(&mut out).map(|_| out)
        })
    };
    let stdout = read_capped(
        Box::new(process.stdout.take().expect("piped")),
        TEMPLATE_OUTPUT,
    );
    let stderr = read_capped(Box::new(process.stderr.take().expect("piped")), 4096);
    let deadline = Instant::now() + Duration::from_secs(TEMPLATE_SECONDS);
    let status = loop {
        match process.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = process.kill();
                let _ = process.wait();
                return Err(failed(format!("it ran longer than {TEMPLATE_SECONDS} s")));
            }
            Err(e) => return Err(failed(format!("its process failed: {e}"))),
        }
    };
    // A child that exits without reading everything closes the pipe: the
    // write's error says nothing more than its status.
    let _ = writer.join();
    let stdout = stdout.join().ok().and_then(|r| r.ok()).unwrap_or_default();
    let stderr = stderr.join().ok().and_then(|r| r.ok()).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    match status.code() {
        Some(0) if stdout.len() > TEMPLATE_OUTPUT => Err(failed(format!(
            "it rendered more than {TEMPLATE_OUTPUT} bytes"
        ))),
        Some(0) => {
            String::from_utf8(stdout).map_err(|_| failed("it rendered invalid UTF-8".into()))
        }
        Some(TEMPLATE_REFUSED) => Err(failed(stderr)),
        _ => Err(failed(format!(
            "its process failed ({status}): {} (a template may use {} MiB of memory)",
            stderr.lines().next().unwrap_or("no message"),
            TEMPLATE_MEMORY >> 20
        ))),
    }
}

/// The exit status of a child that refused a template (its reason on
/// standard error).
pub const TEMPLATE_REFUSED: i32 = 3;

/// Memory a child rendering a template may map, in bytes.
pub const TEMPLATE_MEMORY: u64 = 1 << 30;

/// Seconds a child may take to render a template.
pub const TEMPLATE_SECONDS: u64 = 10;

/// Instructions a template may run per rendering: a long conversation in a
/// real template takes a few hundred per message.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Nesting a template may reach (loops, macro calls, includes).
const TEMPLATE_RECURSION: usize = 100;

/// Bytes a rendering may write: far more than any context holds.
pub const TEMPLATE_OUTPUT: usize = 64 << 20;

/// A writer that refuses to grow past [`TEMPLATE_OUTPUT`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_OUTPUT {
            self.0.resize(TEMPLATE_OUTPUT + 1, 0);
            return Err(std::io::Error::other("rendered text over its limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Most items in one batch (minijinja's own `batch` reserves the count
/// up front, and fills the last batch up to it).
const MAX_BATCH: usize = 100_000;

/// Jinja's `batch(count, fill)`, with `count` bounded.
fn bounded_batch(
    state: &minijinja::State,
    value: minijinja::Value,
    count: usize,
    fill: Option<minijinja::Value>,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    if count > MAX_BATCH {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("batch of {count} items: at most {MAX_BATCH}"),
        ));
    }
    minijinja::filters::batch(state, value, count, fill)
}

/// `format` (strftime's %d %m %Y %y %b %B %a %A %j %%) of the day `days`
/// after 1970-01-01, as Python's `strftime` writes it.
fn strftime_date(days: i64, format: &str) -> String {
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const WEEKDAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: i64 = [31, 28 + leap as i64, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        [..month as usize - 1]
        .iter()
        .sum();
    let (m, w) = (
        MONTHS[month as usize - 1],
        WEEKDAYS[days.rem_euclid(7) as usize],
    );
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('b') => out += &m[..3],
            Some('B') => out += m,
            Some('a') => out += &w[..3],
            Some('A') => out += w,
            Some('j') => out += &format!("{:03}", before + day),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strftime_date;

    #[test]
    fn strftime_writes_dates_as_python_does() {
        assert_eq!(
            strftime_date(0, "%d %b %Y %A %j"),
            "01 Jan 1970 Thursday 001"
        );
        assert_eq!(strftime_date(19723, "%Y-%m-%d %a %y"), "2024-01-01 Mon 24");
        assert_eq!(
            strftime_date(19782, "%d %B %Y, day %j, 100%%"),
            "29 February 2024, day 060, 100%"
        );
    }
}
