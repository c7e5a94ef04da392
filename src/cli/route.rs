//! `l3kit route`: its flags and its report.

use super::print_json;
use clap::Args;
use l3kit::model::moe::Routing;
use l3kit::util::progress::Ui;
use l3kit::verify::route::{self, CalibrateOptions, CalibrationReport, FinalP, RouteSummary};
use l3kit::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct RouteArgs {
    /// A checkpoint (file or folder) with MoE layers.
    #[arg(long)]
    model: PathBuf,
    /// A TOML file naming the MoE layers' tensors ([[moe]] tables; see docs/moe.md).
    #[arg(long)]
    map: Option<PathBuf>,
    /// Hidden states: `hidden` [N, d] or `hidden.<layer>` per layer, optionally `token_ids` [N].
    #[arg(long)]
    inputs: PathBuf,
    /// topk:K, topk:K:norenorm, topp:P or dtopp:P (not with --calibrate).
    #[arg(long, conflicts_with = "calibrate")]
    routing: Option<String>,
    /// Decisions as safetensors (a file), or with --calibrate the trajectory folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run DTop-p's PI controller over consecutive batches of the inputs.
    #[arg(long, requires_all = ["target", "batch_tokens", "out"])]
    calibrate: bool,
    /// Target mean number of active experts per token.
    #[arg(long, requires = "calibrate")]
    target: Option<f64>,
    /// Positions per batch (the last partial batch is dropped).
    #[arg(long, requires = "calibrate")]
    batch_tokens: Option<usize>,
    /// Proportional gain (default 1.0).
    #[arg(long, requires = "calibrate")]
    kp: Option<f64>,
    /// Integral gain (default 0.25).
    #[arg(long, requires = "calibrate")]
    ki: Option<f64>,
    /// Start and base threshold (default 0.5).
    #[arg(long, requires = "calibrate")]
    p0: Option<f64>,
    /// Clamp range of p (default 0.05 to 1.0).
    #[arg(long, requires = "calibrate")]
    p_min: Option<f64>,
    #[arg(long, requires = "calibrate")]
    p_max: Option<f64>,
    /// One threshold and controller per layer, each fed its own layer's mean.
    #[arg(long, requires = "calibrate")]
    per_layer: bool,
    /// Continue from a saved controller (controller.json of an earlier calibration).
    #[arg(long, requires = "calibrate")]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub(crate) fn cmd_route(args: RouteArgs, ui: &Ui, json: bool) -> Result<()> {
    let (device, note) = l3kit::model::select_device(&args.device)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    if args.calibrate {
        let opts = CalibrateOptions {
            target: args.target.expect("clap requires --target"),
            batch_tokens: args.batch_tokens.expect("clap requires --batch-tokens"),
            kp: args.kp,
            ki: args.ki,
            p0: args.p0,
            p_min: args.p_min,
            p_max: args.p_max,
            per_layer: args.per_layer,
            resume: args.resume,
        };
        let out = args.out.expect("clap requires --out");
        let r = route::calibrate(
            &args.model,
            args.map.as_deref(),
            &args.inputs,
            &opts,
            &out,
            &device,
            ui,
        )?;
        if json {
            print_json(&r);
        } else {
            print_calibration(&r);
        }
        return Ok(());
    }
    let Some(text) = args.routing else {
        return Err(Error::input(
            "give --routing topk:K|topp:P|dtopp:P, or --calibrate --target T --batch-tokens B --out DIR",
        ));
    };
    let routing = Routing::parse(&text)?;
    let s = route::route_file(
        &args.model,
        args.map.as_deref(),
        &args.inputs,
        routing,
        args.out.as_deref(),
        &device,
    )?;
    if json {
        print_json(&s);
    } else {
        print_route(&s);
    }
    Ok(())
}

fn print_route(s: &RouteSummary) {
    println!(
        "{} ({} scheme): {} MoE layer(s), {} tokens, routing {} ({:.3} s)",
        s.model.display(),
        s.scheme,
        s.layers.len(),
        s.tokens,
        s.routing,
        s.seconds
    );
    for l in &s.layers {
        println!(
            "  {}: active experts mean {:.3} std {:.3} min {} max {}; load CV {:.3}",
            l.name, l.mean_active, l.std_active, l.min_active, l.max_active, l.load_cv
        );
        let hist: Vec<String> = l
            .histogram
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(k, c)| format!("{k}:{c}"))
            .collect();
        println!("    tokens per active count: {}", hist.join(" "));
        let load: Vec<String> = l.load.iter().map(|x| format!("{x:.3}")).collect();
        println!("    load per expert: {}", load.join(" "));
        let list = |v: &[route::TokenUse]| {
            v.iter()
                .map(|t| format!("{} ({:.2} x{})", t.token_id, t.mean_active, t.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !l.most_experts.is_empty() {
            println!("    most experts: {}", list(&l.most_experts));
            println!("    fewest experts: {}", list(&l.fewest_experts));
        }
    }
    if let Some(o) = &s.out {
        println!("wrote {}", o.display());
    }
}

fn print_calibration(r: &CalibrationReport) {
    println!(
        "calibrated {} ({} controller, target {}) over {} batches of {} positions ({} dropped):",
        r.model.display(),
        r.variant,
        r.target,
        r.batches.len(),
        r.batch_tokens,
        r.dropped_tokens
    );
    println!("  batch        p  mean active");
    for (i, b) in r.batches.iter().enumerate() {
        let mark = if b.clamped { "  (clamped)" } else { "" };
        println!("  {i:>5} {:>8.5} {:>12.4}{mark}", b.p, b.mean_active);
    }
    println!(
        "  mean active over batches {:.4}, std {:.4}",
        r.mean_active, r.std_active
    );
    match &r.final_p {
        FinalP::Global(p) => println!("final p {p} (route with --routing dtopp:{p})"),
        FinalP::PerLayer(m) => {
            for (name, p) in m {
                println!("final p {p} for {name}");
            }
        }
    }
    for f in &r.files {
        println!("wrote {}", f.display());
    }
}
