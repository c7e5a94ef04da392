//! `l3kit upload`: its flags and its report.

use super::{source_options, SourceArgs};
use clap::Args;
use l3kit::util::progress::Ui;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct UploadArgs {
    /// A packed model folder (must pass `inspect --check`).
    dir: PathBuf,
    /// The Hub repository, OWNER/NAME (created when missing).
    #[arg(long)]
    repo: String,
    /// Create the repository as private.
    #[arg(long)]
    private: bool,
    /// The branch to commit to (it must exist).
    #[arg(long, default_value = "main")]
    revision: String,
    /// The commit's title (default: "Upload L3 model packed by l3kit").
    #[arg(long)]
    commit_message: Option<String>,
    /// Open a pull request against --revision instead of committing to it.
    #[arg(long)]
    create_pr: bool,
    /// The Hub's URL (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Check the folder and print the plan (files, sizes, large files); send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Offer the Hub Git LFS only for large files, never Xet.
    #[arg(long)]
    no_xet: bool,
    /// Retries after a connection error or a 5xx answer, with exponential backoff.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Run `verify` against this source checkpoint first (random inputs, CPU); refuse to
    /// upload when it fails. --dialect, --map and --allocation describe the source.
    #[arg(long)]
    verify_with: Option<PathBuf>,
    #[command(flatten)]
    src: SourceArgs,
}

pub(crate) fn cmd_upload(args: UploadArgs, ui: &Ui, json: bool) -> Result<()> {
    let mut opts = l3kit::hub::UploadOptions::new(args.dir, args.repo);
    opts.private = args.private;
    opts.revision = args.revision;
    opts.commit_message = args.commit_message;
    opts.create_pr = args.create_pr;
    opts.endpoint = args.endpoint;
    opts.dry_run = args.dry_run;
    opts.xet = !args.no_xet;
    opts.retry.max_retries = args.retries;
    opts.verify = args.verify_with.map(|source| l3kit::verify::VerifyOptions {
        source,
        packed: opts.dir.clone(),
        source_opts: source_options(&args.src),
        inputs: None,
        profile: None,
        tokens: 1024,
        seed: 0,
        device: "cpu".to_string(),
        tolerance: None,
    });
    // Every text from the network is already redacted where it sits (`hub::Remote`); this
    // last pass over what is printed catches a token that reached a plain string some other
    // way (a path or an endpoint that holds it), through the same redaction function.
    let summary = l3kit::hub::upload(&opts, ui).map_err(l3kit::hub::redact_error)?;
    let text = if json {
        serde_json::to_string_pretty(&summary).expect("summaries serialise") + "\n"
    } else {
        summary.render()
    };
    print!("{}", l3kit::hub::redact(&text));
    Ok(())
}
