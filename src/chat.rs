//! Conversations with instruct models: the model file's chat template (a
//! Jinja program, rendered by minijinja) turns the messages into text, and
//! the conversation stays in the session's KV cache, so each new user turn
//! prefills only its own new tokens, never the earlier turns.
//!
//! How a turn finds its new tokens: the text the session holds (the turns
//! as rendered, each reply as sampled) is a prefix of the conversation
//! rendered with the new message; only the rest is tokenized and fed. A
//! template that renders earlier turns differently once more follow (some
//! drop old reasoning, say) breaks the prefix: the longest common run of
//! tokens is kept and the rest is fed again.

use minijinja::Environment;

use crate::error::{Error, Result};
use crate::generate::{generate_tokens, Length};
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What one turn did.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The assistant's reply (the end-of-turn token not included).
    pub reply: String,
    /// Tokens run before the reply: the new turn's, and at most one left
    /// from the previous reply (its last sampled token).
    pub prefilled: usize,
    /// Reply tokens sampled.
    pub generated: usize,
    /// Whether the model ended its turn (else `max_tokens` or the cache's
    /// capacity cut it short).
    pub ended: bool,
}

/// A conversation kept in one session's KV cache.
#[derive(Debug)]
pub struct Chat {
    env: Environment<'static>,
    messages: Vec<Message>,
    /// The conversation's text that `tokens` (and `pending`) stand for.
    text: String,
    /// Tokens run through the session, in order (its positions).
    tokens: Vec<u32>,
    /// The reply's last sampled token, not run yet (the next turn runs it first).
    pending: Option<u32>,
    /// BOS and EOS as text, for templates that write `bos_token` / `eos_token`.
    bos: String,
    eos: String,
}

impl Chat {
    /// A conversation in `tokenizer`'s chat template (from its GGUF file),
    /// opening with `system`'s message when given. An error if the file
    /// has no template or the template does not parse.
    pub fn new(tokenizer: &Tokenizer, system: Option<&str>) -> Result<Self> {
        let template = tokenizer
            .chat_template()
            .ok_or_else(|| Error::ChatTemplate("the model file has no chat template".into()))?;
        Self::with_template(template, tokenizer, system)
    }

    /// A conversation in `template` (Jinja, as Hugging Face and llama.cpp
    /// render chat templates: `messages`, `add_generation_prompt`,
    /// `bos_token`, `eos_token`, `raise_exception`, Python string methods).
    pub fn with_template(
        template: &str,
        tokenizer: &Tokenizer,
        system: Option<&str>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // A template is a program inside a downloaded file: bounded.
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
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let text_of = |id: u32| tokenizer.control_text(id).unwrap_or_default().to_string();
        let chat = Self {
            env,
            messages: system
                .map(|s| Message::new("system", s))
                .into_iter()
                .collect(),
            text: String::new(),
            tokens: Vec::new(),
            pending: None,
            bos: text_of(tokenizer.bos()),
            eos: text_of(tokenizer.eos()),
        };
        chat.render(&chat.messages, true)?; // a template that cannot run fails now
        Ok(chat)
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The conversation as the template renders it, with the assistant's
    /// turn opened when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
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

    /// Sends the user's `text` and streams the reply through `emit`, up to
    /// `max_tokens` tokens or the end of the assistant's turn. Only the new
    /// turn's tokens are run before the reply. If the session cannot hold
    /// them, the error is [`Error::ContextFull`] and nothing changes.
    pub fn send(
        &mut self,
        session: &mut Session,
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        text: &str,
        max_tokens: usize,
        emit: impl FnMut(&str),
    ) -> Result<Turn> {
        if max_tokens == 0 {
            // A turn whose reply may not have a token would leave its last
            // prompt token unrun: refused before anything changes.
            return Err(Error::ChatTemplate(
                "a reply needs max_tokens of at least 1".into(),
            ));
        }
        let mut messages = self.messages.clone();
        messages.push(Message::new("user", text));
        let rendered = self.render(&messages, true)?;
        if session.cache().len() != self.tokens.len() {
            return Err(Error::ChatTemplate(format!(
                "the session holds {} positions, this conversation {}: use a session only for its chat",
                session.cache().len(),
                self.tokens.len()
            )));
        }
        // The tokens to keep, and the new ones (never none: the new turn
        // holds at least the user's message).
        let (keep, new) = match rendered.strip_prefix(&self.text) {
            Some(rest) => {
                let first = self.tokens.is_empty();
                let bos = first && tokenizer.add_bos() && !rest.starts_with(&self.bos);
                let mut new: Vec<u32> = self.pending.into_iter().collect();
                new.extend(tokenizer.encode_special(rest, bos, false)?);
                (self.tokens.len(), new)
            }
            None => {
                let bos = tokenizer.add_bos() && !rendered.starts_with(&self.bos);
                let all = tokenizer.encode_special(&rendered, bos, false)?;
                let same = all.iter().zip(&self.tokens).take_while(|(a, b)| a == b);
                let keep = same.count().min(all.len() - 1);
                (keep, all[keep..].to_vec())
            }
        };
        let capacity = session.cache().capacity();
        if keep + new.len() > capacity {
            return Err(Error::ContextFull { capacity });
        }
        if keep < self.tokens.len() {
            session.truncate(keep)?;
        }
        let reply = generate_tokens(
            session,
            tokenizer,
            sampler,
            &new,
            Length::NewTokens(max_tokens),
            emit,
        )?;
        self.tokens.truncate(keep);
        self.tokens.extend(&new);
        // The loop runs every sampled token but the last, unless an end
        // token (not kept) followed it.
        let ran = match reply.ended {
            true => reply.tokens.len(),
            false => reply.tokens.len().saturating_sub(1),
        };
        self.tokens.extend(&reply.tokens[..ran]);
        self.pending = reply.tokens.get(ran).copied();
        self.text = rendered + &reply.text;
        messages.push(Message::new("assistant", &reply.text));
        self.messages = messages;
        Ok(Turn {
            reply: reply.text,
            prefilled: new.len(),
            generated: reply.tokens.len(),
            ended: reply.ended,
        })
    }

    /// Saves the conversation: `session`'s cache (see [`Session::save`]),
    /// the token left to run, `sampler`'s state and the messages.
    pub fn save(
        &self,
        session: &Session,
        path: impl AsRef<std::path::Path>,
        sampler: &Sampler,
    ) -> Result<()> {
        let mut extra = Vec::new();
        let mut put = |s: &str| {
            extra.extend((s.len() as u32).to_le_bytes());
            extra.extend(s.as_bytes());
        };
        put(&self.text);
        for m in &self.messages {
            put(&m.role);
            put(&m.content);
        }
        session.save(path, &self.tokens, self.pending, Some(sampler), &extra)
    }

    /// Restores a conversation [`Chat::save`] wrote into `session` and
    /// returns it with its sampler. A file that is not such a save leaves
    /// the session as it was ([`Error::Snapshot`]).
    pub fn restore(
        tokenizer: &Tokenizer,
        session: &mut Session,
        path: impl AsRef<std::path::Path>,
    ) -> Result<(Self, Option<Sampler>)> {
        let path = path.as_ref();
        let bad = || Error::Snapshot {
            path: path.to_path_buf(),
            error: crate::error::SnapshotError::Field("chat", 0),
        };
        let snapshot = crate::snapshot::Snapshot::read(path)?;
        // The messages first: a file that holds none is refused before the session changes.
        let mut strings = Vec::new();
        let mut rest = snapshot.extra.as_slice();
        while !rest.is_empty() {
            let n = rest.get(..4).ok_or_else(bad)?;
            let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
            let s = rest.get(4..4 + n).ok_or_else(bad)?;
            strings.push(String::from_utf8(s.to_vec()).map_err(|_| bad())?);
            rest = &rest[4 + n..];
        }
        if strings.len() % 2 != 1 {
            return Err(bad());
        }
        let mut chat = Chat::new(tokenizer, None)?;
        chat.text = strings.remove(0);
        chat.messages = strings
            .chunks(2)
            .map(|m| Message::new(&m[0], &m[1]))
            .collect();
        let saved = session.restore_from(path, snapshot)?;
        chat.tokens = saved.tokens;
        chat.pending = saved.next;
        Ok((chat, saved.sampler))
    }
}

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
