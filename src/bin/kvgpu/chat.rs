//! `kvgpu chat`: a conversation with an instruct model in its file's chat
//! template. Each reply streams to stdout and stops at the end of the
//! assistant's turn; the conversation stays in the KV cache, so a new turn
//! prefills only its own tokens. On a terminal it asks for each turn; with
//! stdin from a file or a pipe, each line is a user turn. `/save FILE` and
//! `/load FILE` keep a conversation (cache included) across runs; `/quit` ends.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use kvgpu::{Chat, GpuModel, Sampler, Session, SessionOptions};

/// Chat with an instruct model.
#[derive(clap::Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct Args {
    /// Model: a GGUF file with a chat template.
    #[arg(short, long)]
    model: PathBuf,
    /// The system message.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short, long = "n-predict", value_name = "N", default_value_t = 512)]
    n_predict: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, visible_alias = "temperature", default_value_t = 0.7)]
    temp: f32,
    /// Top-p (nucleus) threshold.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// RNG seed; -1: a random one, printed [default: random]
    #[arg(short, long, allow_negative_numbers = true, value_parser = crate::parse_seed)]
    seed: Option<crate::Seed>,
    /// KV cache capacity in positions [default: the model's context length]
    #[arg(short, long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Use the first adapter whose name contains this.
    #[arg(long)]
    adapter: Option<String>,
    /// KV cache storage: f32, f16, q8_0 or q4_0.
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = crate::parse_kv_type)]
    kv_type: kvgpu::KvDtype,
}

/// The commands, for `/help`.
const HELP: &str = "\
/help          this list
/save FILE     save the conversation (its KV cache, messages and sampler)
/load FILE     load a saved conversation in place of this one
/clear         start a new conversation (the system message kept)
/quit, /exit   end (as does the end of input, Ctrl-D)
Any other line is sent to the model; start it with a space to send a line
that begins with /.";

/// Runs the conversation until stdin ends (or `/quit`).
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let seed = crate::Seed::resolve(args.seed, args.temp > 0.0);
    let mut sampler = Sampler::new(args.temp, args.top_p, seed)?;
    let (model, tokenizer) = crate::load_model(Some(&args.model), None)?;
    crate::isolate_templates()?;
    let mut chat = Chat::new(&tokenizer, args.system.as_deref())?;
    let gpu = crate::open_gpu(args.adapter.as_deref())?;
    let gpu_model = crate::compiling(&gpu, || GpuModel::new(&gpu, &model))?;
    let mut options = SessionOptions::default().kv_dtype(args.kv_type);
    options.capacity = args.ctx_size;
    let mut session = crate::compiling(&gpu, || Session::with_options(&gpu_model, options))?;
    let interactive = std::io::stdin().is_terminal();
    let mut stdout = std::io::stdout();
    let mut lines = std::io::stdin().lock().split(b'\n');
    eprintln!("[{}: /help lists the commands]", args.model.display());
    loop {
        if interactive {
            print!("> ");
            stdout.flush()?;
        }
        let Some(line) = lines.next().transpose()? else {
            break;
        };
        // A line that is not UTF-8 is skipped; the conversation goes on.
        let line = match String::from_utf8(line) {
            Ok(line) => line,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                eprintln!("[skipped a line that is not UTF-8 text (bad byte at {at})]");
                continue;
            }
        };
        let text = line.trim_end();
        match text.split_whitespace().next() {
            Some("/quit" | "/exit") => break,
            Some("/help") => {
                eprintln!("{HELP}");
                continue;
            }
            Some("/clear") => {
                chat = Chat::new(&tokenizer, args.system.as_deref())?;
                session.reset();
                eprintln!("[cleared: a new conversation]");
                continue;
            }
            Some(c) if c.starts_with('/') && !matches!(c, "/save" | "/load") => {
                eprintln!("[unknown command {c}: /help lists them; a line starting with a space is sent as it is]");
                continue;
            }
            _ => {}
        }
        if let Some(path) = text.strip_prefix("/save ") {
            let path = std::path::Path::new(path.trim());
            let saved = crate::check_output(path, &[Some(&args.model)]).and_then(|()| {
                chat.save(&session, path, &sampler)
                    .map_err(|e| e.to_string())
            });
            match saved {
                Ok(()) => eprintln!(
                    "[saved {} positions to {}]",
                    session.cache().len(),
                    path.display()
                ),
                Err(e) => eprintln!("[not saved: {e}]"),
            }
            continue;
        }
        if let Some(path) = text.strip_prefix("/load ") {
            match Chat::restore(&tokenizer, &mut session, path.trim()) {
                Ok((restored, saved)) => {
                    chat = restored;
                    sampler = saved.unwrap_or(sampler);
                    eprintln!(
                        "[loaded {} messages, {} positions from {}]",
                        chat.messages().len(),
                        session.cache().len(),
                        path.trim()
                    );
                }
                Err(e) => eprintln!("[not loaded: {e}]"),
            }
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let turn = chat.send(
            &mut session,
            &tokenizer,
            &mut sampler,
            text,
            args.n_predict,
            |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            },
        );
        match turn {
            Ok(turn) => {
                println!();
                crate::save_kernels(&gpu);
                eprintln!(
                    "[{} new tokens prefilled, {} generated{}, {} of {} positions in use]",
                    turn.prefilled,
                    turn.generated,
                    match (turn.ended, session.cache().len() == session.cache().capacity()) {
                        (true, _) => "",
                        (false, true) => ", cut: the context is full",
                        (false, false) => ", cut at -n",
                    },
                    session.cache().len(),
                    session.cache().capacity()
                );
            }
            Err(kvgpu::Error::ContextFull { capacity }) => eprintln!(
                "[not sent: the conversation would outgrow the context ({capacity} positions); /clear starts a new one, a larger -c holds more]"
            ),
            // The template refused this turn: the conversation is as it was.
            Err(e @ kvgpu::Error::ChatTemplate(_)) => eprintln!("[not sent: {e}]"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
