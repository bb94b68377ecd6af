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
//!
//! A template is a program inside a downloaded file, so its instructions,
//! nesting and output are bounded; an application that renders templates
//! it did not write should also [`isolate_templates`], which bounds their
//! memory and time in a child process (the `kvgpu` tool does).

mod template;

use template::Template;
pub use template::{
    isolate_templates, render_request, TEMPLATE_FUEL, TEMPLATE_MEMORY, TEMPLATE_OUTPUT,
    TEMPLATE_REFUSED, TEMPLATE_SECONDS,
};

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
    template: Template,
    messages: Vec<Message>,
    /// The conversation's text that `tokens` (and `pending`) stand for.
    text: String,
    /// Tokens run through the session, in order (its positions).
    tokens: Vec<u32>,
    /// The reply's last sampled token, not run yet (the next turn runs it first).
    pending: Option<u32>,
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
        let text_of = |id: u32| tokenizer.control_text(id).unwrap_or_default().to_string();
        let chat = Self {
            template: Template::new(template, text_of(tokenizer.bos()), text_of(tokenizer.eos()))?,
            messages: system
                .map(|s| Message::new("system", s))
                .into_iter()
                .collect(),
            text: String::new(),
            tokens: Vec::new(),
            pending: None,
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
        self.template.render(messages, add_generation_prompt)
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
        // A turn that cannot fit however it tokenizes is refused first.
        let capacity = session.cache().capacity();
        let least = match rendered.strip_prefix(&self.text) {
            Some(rest) => self.tokens.len() + tokenizer.min_tokens(rest),
            None => tokenizer.min_tokens(&rendered),
        };
        if least > capacity {
            return Err(Error::ContextFull { capacity });
        }
        // The tokens to keep, and the new ones (never none: the new turn
        // holds at least the user's message).
        let (keep, new) = match rendered.strip_prefix(&self.text) {
            Some(rest) => {
                let first = self.tokens.is_empty();
                let bos = first && tokenizer.add_bos() && !rest.starts_with(&self.template.bos);
                let mut new: Vec<u32> = self.pending.into_iter().collect();
                new.extend(tokenizer.encode_special(rest, bos, false)?);
                (self.tokens.len(), new)
            }
            None => {
                let bos = tokenizer.add_bos() && !rendered.starts_with(&self.template.bos);
                let all = tokenizer.encode_special(&rendered, bos, false)?;
                let same = all.iter().zip(&self.tokens).take_while(|(a, b)| a == b);
                let keep = same.count().min(all.len() - 1);
                (keep, all[keep..].to_vec())
            }
        };
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
