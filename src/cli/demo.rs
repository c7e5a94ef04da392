//! `l3kit demo`: its flags and the report of every step.

use super::allocate::print_allocation;
use super::pack::print_pack;
use super::plan::print_demo_plan;
use super::print_json;
use super::profile::print_profile;
use clap::Args;
use l3kit::util::progress::Ui;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// The bundled data folder (default: this source tree's fixtures/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the demo's outputs.
    #[arg(long, default_value = "target/l3kit-demo")]
    out: PathBuf,
}

pub(crate) fn cmd_demo(args: DemoArgs, ui: &Ui, json: bool) -> Result<()> {
    let data = args.data.unwrap_or_else(l3kit::demo::default_data_dir);
    let result = l3kit::demo::run(&data, &args.out, ui)?;
    if json {
        print_json(&result);
    } else {
        println!("== 1. profile: {}", result.profile_path.display());
        print_profile(&result.profile);
        println!("\n== 2. allocate: {}", result.allocation_path.display());
        print_allocation(&result.allocation);
        println!(
            "\n== 3. plan: context coverage vs expected rows per token E[d_t] (training vs held-out)"
        );
        print_demo_plan(&result.plan);
        let t = &result.trained;
        println!("\n== 4. pack: the bundled trained model (fixtures/trained), int8 tables");
        println!(
            "  its allocation, re-derived from the corpus with its tokenizer (4 rows/token, k_max 64): {}",
            if t.allocation_matches_training {
                "identical to the one it was trained with"
            } else {
                "DIFFERS"
            }
        );
        print_pack(&t.pack);
        println!(
            "  inspect --check: {} files re-hashed, {}",
            t.check.files_hashed,
            if t.check.ok() {
                "every invariant holds".to_string()
            } else {
                format!("{} problems", t.check.problems.len())
            }
        );
        println!(
            "\n== 5. verify: packed against source on {}",
            t.verify.inputs
        );
        for l in &t.verify.layers {
            println!(
                "  {} {}: relative L2 {:.2e} (tolerance {:.0e}), cosine {:.6}, max abs {:.2e}",
                if l.passed { "ok  " } else { "FAIL" },
                l.name,
                l.relative_l2_error,
                l.tolerance,
                l.cosine_similarity,
                l.max_abs_error
            );
        }
    }
    Ok(())
}
