//! The `l3kit` command line: parse the arguments and dispatch to the command's file in
//! `src/cli/`.

use clap::{Parser, Subcommand};
use l3kit::util::progress::Ui;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "l3kit",
    version,
    about = "Toolkit for Large Lookup Layers (L3): profile a corpus, allocate embedding rows, pack, verify, publish",
    after_help = "Exit codes: 0 success, 1 a check failed, 2 bad input or usage.\n\nStart with `l3kit demo` to run the pipeline on the bundled data."
)]
struct Cli {
    /// Print a machine-readable JSON summary on stdout instead of the human report.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenise a corpus and collect unigram counts and the LZW codeword dictionary.
    #[command(after_help = "Examples:\n  \
        l3kit profile --tokenizer tokenizer.json corpus.txt --out profile.safetensors\n  \
        l3kit profile --tokenizer tokenizer.json --field text shard-*.parquet --max-tokens 100000000 --out p.safetensors\n  \
        l3kit profile --vocab-size 50257 --separator 50256 train.u16 --out p.safetensors")]
    Profile(cli::profile::ProfileArgs),
    /// Tokenise a corpus into a flat u16/u32 id file with a separator after every sequence
    /// (and a manifest), so tokenisation can fan out over many jobs and `profile` read the
    /// shards in order.
    #[command(after_help = "Examples:\n  \
        l3kit tokenize --tokenizer tokenizer.json part-00007.parquet --field text --out tok/part-00007.u16\n  \
        l3kit profile --vocab-size 50257 --separator 50256 tok/part-*.u16 --out p.safetensors")]
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Turn a profile into a per-token allocation (the CSR `bounds` of every L3 table).
    #[command(after_help = "Examples:\n  \
        l3kit allocate --profile p.safetensors --rows-per-token 3.9 --out alloc.safetensors\n  \
        l3kit allocate --profile p.safetensors --n-emb 710000 --k-max 512 --d-in 2048 --d-emb 1024 --dtype bf16 --out a.safetensors\n\n\
        Python: safetensors.numpy.load_file(\"alloc.safetensors\")[\"bounds\"]")]
    Allocate(cli::allocate::AllocateArgs),
    /// Pack a trained checkpoint's L3 tables into offload-friendly safetensors shards.
    #[command(after_help = "Examples:\n  \
        l3kit pack ckpt/ --out packed/\n  \
        l3kit pack model.pt --allocation alloc.safetensors --dtype int8 --max-shard-size 2GB --out packed/\n  \
        l3kit pack ckpt.safetensors --map names.toml --dtype bf16 --out packed/")]
    Pack(cli::pack::PackArgs),
    /// Rebuild a checkpoint in the source dialect's layout from a packed folder.
    Unpack(cli::unpack::UnpackArgs),
    /// Summarise a packed folder or a source checkpoint; --check verifies a packed folder.
    #[command(after_help = "Examples:\n  \
        l3kit inspect ckpt/                 # what pack would detect\n  \
        l3kit inspect packed/ --profile p.safetensors\n  \
        l3kit inspect --check packed/       # exit 1 on a mismatch, 2 if unreadable")]
    Inspect(cli::inspect::InspectArgs),
    /// Write a synthetic L3 checkpoint of any size (for benchmarks and tests).
    Synth(cli::synth::SynthArgs),
    /// Check packed tables against their source with the reference forward pass.
    #[command(after_help = "Examples:\n  \
        l3kit verify --source ckpt/ --packed packed/\n  \
        l3kit verify --source model.pt --allocation alloc.safetensors --packed packed/ --profile p.safetensors --tokens 4096\n  \
        l3kit verify --source ckpt/ --packed packed/ --inputs captured.safetensors --json")]
    Verify(cli::verify::VerifyArgs),
    /// Run every L3 layer of a packed folder or checkpoint on hidden states from a file.
    #[command(
        after_help = "Inputs: a safetensors file with `token_ids` [N] (I64, I32 or U32) and\n\
        `hidden` [N, d_in] or `hidden.<layer name>` per layer (floats).\n\
        Output: a safetensors file with `output.<layer name>` [N, d_in] (F32)."
    )]
    Forward(cli::forward::ForwardArgs),
    /// Route hidden states through every MoE layer (Top-k, Top-p, DTop-p); --calibrate the PI controller.
    #[command(after_help = "Examples:\n  \
        l3kit route --model moe.safetensors --inputs captured.safetensors --routing topk:2\n  \
        l3kit route --model ckpt/ --inputs h.safetensors --routing dtopp:0.7 --out decisions.safetensors --json\n  \
        l3kit route --model ckpt/ --inputs h.safetensors --calibrate --target 2 --batch-tokens 512 --out calib/\n\n\
        Inputs: `hidden` [N, d] or `hidden.<layer name>` per MoE layer (floats), optionally\n\
        `token_ids` [N]. --out (routing): `experts.<layer>` U8 [N, E], `weights.<layer>` F32 [N, E].\n\
        --out (calibrate): trajectory.csv/.json/.svg/.png and controller.json (for --resume).")]
    Route(cli::route::RouteArgs),
    /// Perplexity and bits per byte of a whole model on text; --compare a packed folder with its source.
    #[command(after_help = "Examples:\n  \
        l3kit eval --model packed/ --tokenizer tokenizer.json heldout.txt\n  \
        l3kit eval --model packed/ --compare ckpt/ --tokenizer tokenizer.json heldout.txt --json\n\n\
        Windows: records (lines) tokenised one by one and concatenated (nanochat models get BOS\n\
        before each), cut into windows of --seq-len + 1 tokens, each evaluated from position 0.")]
    Eval(cli::eval::EvalArgs),
    /// Continue a prompt with a whole model (greedy by default, sampled with --temperature).
    #[command(after_help = "Examples:\n  \
        l3kit generate --model packed/ --tokenizer tokenizer.json --prompt \"To be, or not\"\n  \
        l3kit generate --model packed/ --prompt-ids 1,2,3 --max-new-tokens 16 --json")]
    Generate(cli::generate::GenerateArgs),
    /// Replay a token stream as decode and report what the sparse layers must move per
    /// step, when it is known, and the predicted stall of serving it over a link.
    #[command(after_help = "Examples:\n  \
        l3kit traffic --model packed/ --text heldout.txt --tokenizer tokenizer.json\n  \
        l3kit traffic --model packed/ --tokens ids.u16 --batch 1,16,256 --link 25 --hot-set 4096 --profile p.safetensors")]
    Traffic(cli::traffic::TrafficArgs),
    /// Evaluate any allocation on a held-out profile: coverage, E[d_t], bytes, starved tokens.
    #[command(after_help = "Examples:\n  \
        l3kit evaluate --allocation alloc.safetensors --profile heldout.safetensors\n  \
        l3kit evaluate --allocation alloc.safetensors --profile heldout.safetensors --train-profile train.safetensors \\\n      \
        --d-in 2048 --d-emb 1024 --dtype bf16 --tokenizer tokenizer.json")]
    Evaluate(cli::evaluate::EvaluateArgs),
    /// Sweep memory and E[d_t] budgets: coverage frontier as CSV, JSON, SVG and PNG.
    #[command(after_help = "Examples:\n  \
        l3kit plan --profile train.safetensors --heldout heldout.safetensors --out plan/\n  \
        l3kit plan --profile train.safetensors --rows-per-token 2,3.9,8 --mean-rows 2,4,8,16,32 --out plan/\n\n\
        Single allocations: l3kit allocate --method optimal --mean-rows M (or --max-bytes-per-token B).")]
    Plan(cli::plan::PlanArgs),
    /// Run the pipeline on the bundled data (GPT-2 tokenizer, public-domain English text).
    Demo(cli::demo::DemoArgs),
    /// Publish a packed folder to the Hugging Face Hub in one commit (checked first).
    #[command(after_help = "Examples:\n  \
        l3kit upload packed/ --repo my-org/my-l3-model --dry-run\n  \
        HF_TOKEN=hf_... l3kit upload packed/ --repo my-org/my-l3-model --private\n  \
        l3kit upload packed/ --repo my-org/my-l3-model --create-pr --commit-message \"int8 tables\"\n\n\
        Token: HF_TOKEN, else $HF_TOKEN_PATH, else $HF_HOME/token (~/.cache/huggingface/token).\n\
        Files the Hub already holds (same SHA-256 / git blob id) are not sent again.")]
    Upload(cli::upload::UploadArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`l3kit ... --json | head`), as Unix tools do, instead of
    // panicking in println!.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let ui = Ui { quiet: cli.quiet };
    let result = match cli.command {
        Command::Profile(args) => cli::profile::cmd_profile(args, &ui, cli.json),
        Command::Tokenize(args) => cli::tokenize::cmd_tokenize(args, &ui, cli.json),
        Command::Allocate(args) => cli::allocate::cmd_allocate(args, cli.json),
        Command::Pack(args) => cli::pack::cmd_pack(args, &ui, cli.json),
        Command::Unpack(args) => cli::unpack::cmd_unpack(args, &ui, cli.json),
        Command::Inspect(args) => cli::inspect::cmd_inspect(args, &ui, cli.json),
        Command::Synth(args) => cli::synth::cmd_synth(args, cli.json),
        Command::Verify(args) => cli::verify::cmd_verify(args, &ui, cli.json),
        Command::Forward(args) => cli::forward::cmd_forward(args, cli.json),
        Command::Route(args) => cli::route::cmd_route(args, &ui, cli.json),
        Command::Eval(args) => cli::eval::cmd_eval(args, &ui, cli.json),
        Command::Generate(args) => cli::generate::cmd_generate(args, cli.json),
        Command::Traffic(args) => cli::traffic::cmd_traffic(args, cli.json),
        Command::Evaluate(args) => cli::evaluate::cmd_evaluate(args, cli.json),
        Command::Plan(args) => cli::plan::cmd_plan(args, &ui, cli.json),
        Command::Demo(args) => cli::demo::cmd_demo(args, &ui, cli.json),
        Command::Upload(args) => cli::upload::cmd_upload(args, &ui, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
