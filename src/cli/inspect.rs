//! `l3kit inspect` (and `--check`): its flags and its report.

use super::{print_json, SourceArgs};
use clap::Args;
use l3kit::pack::{self};
use l3kit::profile::Profile;
use l3kit::util::progress::Ui;
use l3kit::util::units::human_bytes;
use l3kit::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// A packed folder, or a source checkpoint.
    path: PathBuf,
    /// Re-hash every file and check every invariant of a packed folder: exit 1 when a hash,
    /// a listed file or the layout does not match, exit 2 when the folder cannot be read as a
    /// packed model at all (docs/format.md, "Invariants").
    #[arg(long)]
    check: bool,
    /// A profile, for the expected bytes fetched per token.
    #[arg(long)]
    profile: Option<PathBuf>,
    #[command(flatten)]
    src: SourceArgs,
}

pub(crate) fn cmd_inspect(args: InspectArgs, ui: &Ui, json: bool) -> Result<()> {
    if args.check {
        let report = l3kit::formats::packed::check_packed_folder(&args.path, ui);
        if json {
            print_json(&report);
        } else if report.ok() {
            println!(
                "ok: {} files ({}) re-hashed, every invariant holds",
                report.files_hashed,
                human_bytes(report.bytes_hashed as f64)
            );
        } else if !report.bad_input {
            for p in &report.problems {
                println!("problem: {p}");
            }
        }
        // A folder that cannot be read as a packed model is bad input (exit 2, the reason on
        // stderr); mismatches the check found exit 1.
        if report.bad_input {
            return Err(Error::Input(report.problems.join("; ")));
        }
        if !report.ok() {
            return Err(Error::Check(format!(
                "{}: {} problem(s) found",
                args.path.display(),
                report.problems.len()
            )));
        }
        return Ok(());
    }
    if l3kit::verify::is_packed(&args.path) {
        let profile = match &args.profile {
            Some(p) => Some(Profile::read(p)?),
            None => None,
        };
        let r = pack::inspect::inspect_packed(&args.path, profile.as_ref())?;
        if json {
            print_json(&r);
            return Ok(());
        }
        println!(
            "packed model {} (format v{}, {} dialect): vocab {}, k_max {}, tables {}, {} files, {}",
            r.dir.display(),
            r.format_version,
            r.dialect,
            r.vocab_size,
            r.k_max,
            r.dtype.name(),
            r.files,
            human_bytes(r.total_bytes as f64)
        );
        println!(
            "  semantics {}",
            serde_json::to_string(&r.semantics).expect("serialises")
        );
        for l in &r.layers {
            print!(
                "  {}: n_emb {} d_in {} d_emb {} d_up {}, {} in {} part(s), worst case {} per token",
                l.name,
                l.n_emb,
                l.d_in,
                l.d_emb,
                l.d_up,
                human_bytes(l.table_bytes as f64),
                l.parts,
                human_bytes(l.worst_case_bytes_per_token as f64)
            );
            match l.expected_bytes_per_token {
                Some(e) => println!(", expected {}", human_bytes(e)),
                None => println!(),
            }
        }
        return Ok(());
    }
    let r = pack::inspect::inspect_source(
        &args.path,
        args.src.dialect,
        args.src.map.as_deref(),
        args.src.allocation.as_deref(),
    )?;
    if json {
        print_json(&r);
        return Ok(());
    }
    println!(
        "checkpoint {} ({} dialect{})",
        r.path.display(),
        r.dialect,
        r.vocab_size
            .map(|v| format!(", vocab {v}"))
            .unwrap_or_default()
    );
    println!(
        "  semantics {}",
        serde_json::to_string(&r.semantics).expect("serialises")
    );
    for l in &r.layers {
        println!(
            "  {} (layer {}): {} {}{}, n_emb {} d_in {} d_emb {} d_up {}{}",
            l.name,
            l.layer_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into()),
            l.keys,
            l.dtype,
            if l.tied { ", tied K = V" } else { "" },
            l.n_emb,
            l.d_in,
            l.d_emb,
            l.d_up,
            l.lambda
                .as_ref()
                .map(|x| format!(", lambda {x}"))
                .unwrap_or_default()
        );
        println!("      allocation: {}", l.allocation_from);
    }
    println!(
        "  {} other tensors ({}) pass through unchanged",
        r.other_tensors,
        human_bytes(r.other_bytes as f64)
    );
    Ok(())
}
