//! `l3kit generate`: its flags and its (streamed) report.

use super::{print_json, source_options, ModelArgs, SourceArgs};
use clap::Args;
use l3kit::infer::generate::{generate, GenerateReport};
use l3kit::model::sampling::Sampling;
use l3kit::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Hugging Face tokenizer.json of the model (needed for --prompt and to print text).
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// The prompt text (nanochat-family models get their BOS token before it).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub(crate) prompt: Option<String>,
    /// The prompt as token ids, e.g. 1,2,3 (used as given: nothing is added).
    #[arg(long, value_delimiter = ',')]
    pub(crate) prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    pub(crate) max_new_tokens: usize,
    /// 0 is greedy (the default); above 0 samples from the softmax at this temperature.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f64,
    /// With sampling: keep the smallest set of most likely tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) src: SourceArgs,
}

/// The largest --max-new-tokens accepted: more than any model here can hold.
const MAX_NEW_TOKENS: usize = 1 << 20;

pub(crate) fn cmd_generate(args: GenerateArgs, json: bool) -> Result<()> {
    if args.max_new_tokens == 0 || args.max_new_tokens > MAX_NEW_TOKENS {
        return Err(Error::input(format!(
            "--max-new-tokens {}: must be between 1 and {MAX_NEW_TOKENS}",
            args.max_new_tokens
        )));
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.check()?;
    let loaded = args.model.open(&source_options(&args.src))?;
    let tokenizer = match &args.tokenizer {
        Some(p) => {
            let (t, _) = l3kit::formats::tokenizer::load_tokenizer(p)?;
            loaded.check_tokenizer(&t, p)?;
            Some((t, p.clone()))
        }
        None => None,
    };
    let prompt: Vec<u32> = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => {
            let (tok, path) = tokenizer
                .as_ref()
                .ok_or_else(|| Error::input("--prompt needs --tokenizer (or give --prompt-ids)"))?;
            let mut ids = Vec::new();
            if let Some(b) = loaded.bos_for(tok, path)? {
                ids.push(b);
            }
            let enc = tok
                .encode_fast(text.as_str(), false)
                .map_err(|e| Error::input(format!("--prompt: tokenisation failed: {e}")))?;
            ids.extend_from_slice(enc.get_ids());
            ids
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    // Stream the text: print what the decoded continuation adds at each token.
    let mut printed = String::new();
    let mut new_ids = Vec::new();
    let stream = !json;
    let mut on_token = |id: u32| -> Result<()> {
        new_ids.push(id);
        if !stream {
            return Ok(());
        }
        let mut out = std::io::stdout();
        match &tokenizer {
            Some((tok, _)) => {
                let text = tok
                    .decode(&new_ids, true)
                    .map_err(|e| Error::Other(format!("cannot decode: {e}")))?;
                // Hold back a trailing partial character (byte-level tokens can split one).
                if text.ends_with('\u{FFFD}') {
                    return Ok(());
                }
                if let Some(delta) = text.strip_prefix(printed.as_str()) {
                    print!("{delta}");
                } else {
                    print!("{text}");
                }
                printed = text;
            }
            None => print!("{id} "),
        }
        out.flush().ok();
        Ok(())
    };
    let mut report = generate(
        &loaded.decoder,
        &prompt,
        args.max_new_tokens,
        &sampling,
        args.model.prefetch(),
        false,
        &mut on_token,
    )?;
    if let Some((tok, _)) = &tokenizer {
        report.text = Some(
            tok.decode(&report.new_token_ids, true)
                .map_err(|e| Error::Other(format!("cannot decode: {e}")))?,
        );
    }
    if json {
        print_json(&report);
    } else {
        println!();
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &GenerateReport) {
    eprintln!(
        "{} new tokens in {:.3} s: {:.1} tokens/s (prefill of {} tokens {:.3} s){}",
        r.new_token_ids.len(),
        r.decode_seconds,
        r.tokens_per_second,
        r.prompt_token_ids.len(),
        r.prefill_seconds,
        if r.stopped_at_context {
            "; stopped at the model's context"
        } else {
            ""
        }
    );
    if r.serving.bytes_read > 0 {
        eprintln!("{}", r.serving.describe());
    }
}
