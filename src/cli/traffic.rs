//! `l3kit traffic`: its flags and its report.

use super::{print_json, source_options, SourceArgs};
use clap::Args;
use l3kit::formats::profile::Profile;
use l3kit::infer::traffic::{plot, read_id_stream, traffic, ModelTraffic, TrafficOptions};
use l3kit::infer::OpenModel;
use l3kit::util::atomic_file::write_atomic;
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct TrafficArgs {
    /// A packed folder or source checkpoint; repeat to compare models on the same stream.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The token stream as a flat .u16/.u32 id file.
    #[arg(long, conflicts_with = "text", required_unless_present = "text")]
    tokens: Option<PathBuf>,
    /// The token stream as text (one record per line), tokenised with --tokenizer.
    #[arg(long, requires = "tokenizer")]
    text: Option<PathBuf>,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Batch sizes: B sequences (contiguous slices of the stream) decode together.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    batch: Vec<usize>,
    /// Decode steps replayed per batch size (fewer when the stream is short).
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Read at most this many tokens of the stream.
    #[arg(long, default_value_t = 1_000_000)]
    max_tokens: u64,
    /// Link bandwidth in GB/s (10^9 bytes) for the stall prediction (e.g. 25 for PCIe 4 x16,
    /// 0.4 for a SATA SSD).
    #[arg(long)]
    link: Option<f64>,
    /// Compute time of one decoder block in ms (default: measured from the model's decode on
    /// this machine, at each batch size).
    #[arg(long, requires = "link")]
    block_ms: Option<f64>,
    /// Keep the N most frequent tokens' rows (by --profile) resident: report the hit rate.
    #[arg(long, requires = "profile")]
    hot_set: Option<usize>,
    /// The profile that ranks tokens for --hot-set.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// A folder for traffic.json and the plot (traffic.svg, traffic.png): bytes per step and
    /// predicted overhead against the batch size.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    src: SourceArgs,
}

pub(crate) fn cmd_traffic(args: TrafficArgs, json: bool) -> Result<()> {
    if args.steps == 0 {
        return Err(Error::input("--steps must be at least 1"));
    }
    if let Some(b) = args.batch.iter().find(|&&b| b == 0 || b > 1 << 16) {
        return Err(Error::input(format!("--batch {b}: must be 1 to 65536")));
    }
    let link = match args.link {
        Some(g) if !(g.is_finite() && g > 0.0) => {
            return Err(Error::input(format!("--link {g}: must be a positive GB/s")))
        }
        g => g.map(|g| g * 1e9),
    };
    if let Some(ms) = args.block_ms.filter(|m| !(m.is_finite() && *m >= 0.0)) {
        return Err(Error::input(format!("--block-ms {ms}: must be >= 0")));
    }
    if let Some(out) = &args.out {
        let mut inputs: Vec<&std::path::Path> = args.model.iter().map(PathBuf::as_path).collect();
        inputs.extend(args.tokens.as_deref());
        inputs.extend(args.text.as_deref());
        inputs.extend(args.tokenizer.as_deref());
        inputs.extend(args.profile.as_deref());
        check_output(out, &inputs, OutputKind::Folder, "--out")?;
    }
    let src = source_options(&args.src);
    let device = candle_core::Device::Cpu;
    let models: Vec<OpenModel> = args
        .model
        .iter()
        .map(|p| OpenModel::open(p, &src, &device))
        .collect::<Result<_>>()?;
    let vocab = models[0].decoder.vocab_size();
    let stream = match (&args.tokens, &args.text, &args.tokenizer) {
        (Some(t), _, _) => read_id_stream(t, vocab as u32, args.max_tokens)?,
        (None, Some(text), Some(tok)) => {
            let (tokenizer, _) = l3kit::formats::tokenizer::load_tokenizer(tok)?;
            models[0].check_tokenizer(&tokenizer, tok)?;
            l3kit::infer::eval::token_stream(
                std::slice::from_ref(text),
                None,
                None,
                false,
                &tokenizer,
                None,
                Some(args.max_tokens),
            )?
            .ids
        }
        _ => {
            return Err(Error::input(
                "give --tokens FILE, or --text FILE --tokenizer T",
            ))
        }
    };
    let hot_tokens = match (&args.profile, args.hot_set) {
        (Some(p), Some(n)) => Some(Profile::read_hot_set(p, n, vocab)?),
        _ => None,
    };
    let opts = TrafficOptions {
        batches: args.batch.clone(),
        steps: args.steps,
        link_bytes_per_second: link,
        block_ms: args.block_ms,
        hot_tokens,
    };
    let reports: Vec<ModelTraffic> = models
        .iter()
        .map(|m| traffic(&m.decoder, &m.path.display().to_string(), &stream, &opts))
        .collect::<Result<_>>()?;
    let summary = serde_json::json!({
        "stream_tokens": stream.len(),
        "link_gb_per_second": args.link,
        "models": reports,
    });
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let text = serde_json::to_string_pretty(&summary).expect("summaries serialise");
        write_atomic(&out.join("traffic.json"), format!("{text}\n").as_bytes())?;
        plot(&reports, &out.join("traffic.svg"), &out.join("traffic.png"))?;
    }
    if json {
        print_json(&summary);
    } else {
        print_report(&reports, stream.len(), args.link);
    }
    Ok(())
}

fn print_report(reports: &[ModelTraffic], tokens: usize, link: Option<f64>) {
    println!(
        "traffic: {tokens} tokens replayed as decode{}",
        link.map(|g| format!(", link {g} GB/s")).unwrap_or_default()
    );
    for r in reports {
        println!(
            "\n{} ({} family, {} sparse layers; L3 rows known at step start)",
            r.model, r.family, r.sparse_layers
        );
        println!(
            "  {:>6} {:>9} {:>12} {:>11} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}",
            "batch",
            "distinct",
            "MB/step",
            "KB/token",
            "block ms",
            "step ms",
            "stall ms",
            "overhead",
            "hot hits",
            "w/ hot"
        );
        for b in &r.batches {
            let opt = |v: Option<f64>, scale: f64, digits: usize| {
                v.map(|v| format!("{:.*}", digits, v * scale))
                    .unwrap_or_else(|| "-".into())
            };
            let l3 = !b.layers.is_empty();
            println!(
                "  {:>6} {:>9.1} {:>12} {:>11} {:>9} {:>9} {:>10} {:>8}% {:>8}% {:>9}%",
                b.batch,
                b.mean_distinct_tokens,
                opt(l3.then_some(b.mean_bytes_per_step), 1e-6, 3),
                opt(l3.then_some(b.mean_bytes_per_token), 1e-3, 1),
                opt(b.timing.as_ref().map(|t| t.block_ms), 1.0, 2),
                opt(b.timing.as_ref().map(|t| t.step_ms), 1.0, 1),
                opt(b.predicted_stall_ms, 1.0, 2),
                opt(b.predicted_overhead, 100.0, 1),
                opt(b.hot.as_ref().map(|h| h.hit_rate), 100.0, 1),
                opt(b.predicted_overhead_with_hot_set, 100.0, 1),
            );
            if let Some(m) = &b.moe {
                println!(
                    "  {:>6} MoE experts (known after each router): {} distinct per layer, \
                     {:.3} MB/step, step {:.1} ms, stall {} ms, overhead {}%",
                    "",
                    m.mean_distinct_experts
                        .iter()
                        .map(|d| format!("{d:.1}"))
                        .collect::<Vec<_>>()
                        .join("/"),
                    m.mean_bytes_per_step / 1e6,
                    m.step_ms,
                    opt(m.predicted_stall_ms, 1.0, 2),
                    opt(m.predicted_overhead, 100.0, 1),
                );
            }
        }
    }
}
