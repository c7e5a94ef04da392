//! The model card `upload` writes when the folder has no `README.md`: YAML front matter the Hub
//! reads (library, tags, licence when `config.json` names one) and a body that says what the
//! model is, its L3 layers, table dtype, format version, allocation and how to load the files.
//!
//! The card depends only on the folder's contents and the repository name, so uploading the same
//! folder twice produces the same bytes (and the second upload sees nothing to change).

use crate::formats::allocation::histogram;
use crate::formats::packed::PackedModel;
use crate::formats::packed::{Residual, TableDtype};
use crate::formats::packed::{CONFIG_FILE, INDEX_FILE};
use crate::pack::inspect::inspect_packed;
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small};
use std::fmt::Write as _;
use std::path::Path;

/// Human-readable size (B, KiB, MiB, GiB, TiB).
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A licence identifier as the Hub's metadata expects it (e.g. `apache-2.0`, `mit`, `other`);
/// anything else is left out rather than written into YAML.
fn clean_license(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+'));
    ok.then(|| s.to_ascii_lowercase())
}

/// Generate the model card for the packed folder `dir`, to be published as `repo`
/// (`OWNER/NAME`).
pub fn model_card(dir: &Path, repo: &str) -> Result<String> {
    let model = PackedModel::open(dir)?;
    let report = inspect_packed(dir, None)?;
    let c = &model.config;
    let config_path = dir.join(CONFIG_FILE);
    let config_json: serde_json::Value =
        serde_json::from_slice(&read_small(&config_path, limits::CONFIG, "a config file")?)
            .map_err(|e| Error::in_file(&config_path, format!("not valid JSON: {e}")))?;
    let license = config_json
        .get("license")
        .and_then(|l| l.as_str())
        .and_then(clean_license);
    let model_type = config_json
        .get("model_type")
        .and_then(|m| m.as_str())
        .filter(|m| {
            m.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    let name = repo.rsplit('/').next().unwrap_or(repo);

    let mut s = String::new();
    // Front matter.
    s.push_str("---\nlibrary_name: l3kit\n");
    if let Some(l) = &license {
        let _ = writeln!(s, "license: {l}");
    }
    s.push_str("tags:\n- l3\n- large-lookup-layers\n- safetensors\n---\n\n");

    let _ = writeln!(s, "# {name}\n");
    let n_layers = c.layers.len();
    let _ = writeln!(
        s,
        "A language model with {n_layers} **Large Lookup Layer{}** (L3; Tseng & De Sa, \
         *L³: Large Lookup Layers*, [arXiv:2601.21461](https://arxiv.org/abs/2601.21461)), \
         packed by l3kit.\n",
        if n_layers == 1 { "" } else { "s" }
    );
    s.push_str(
        "An L3 layer is an embedding table inside the decoder: every vocabulary token owns a \
         private block of key/value rows, and the layer attends from the hidden state over the \
         current token's block only. Routing is by token id, so the rows a token needs are known \
         before the layer runs and can stay in host memory until then. In this packed layout \
         everything one token needs from one layer is **one contiguous byte range** of one \
         file. All other tensors are ordinary safetensors shards under their original names.\n\n",
    );

    // Summary table.
    s.push_str("## Model\n\n| | |\n|---|---|\n");
    if let Some(m) = model_type {
        let _ = writeln!(s, "| model type | `{m}` |");
    }
    let _ = writeln!(s, "| vocabulary | {} tokens |", c.vocab_size);
    let _ = writeln!(s, "| L3 layers | {n_layers} |");
    let _ = writeln!(
        s,
        "| table dtype | {}{} |",
        c.dtype.name(),
        if c.dtype == TableDtype::Int8 {
            " (symmetric per-row, f32 scales for the key and value parts)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| keys and values | {} |",
        if c.semantics.tied {
            "one tied table (K = V)"
        } else {
            "separate; a packed row is the key row followed by the value row"
        }
    );
    let residual = match c.semantics.residual {
        Residual::Replace => "the layer output replaces the hidden state",
        Residual::AddLambda => "x + lambda * out (a learned lambda per layer)",
        Residual::Add => "x + out (an add residual without a lambda)",
    };
    let _ = writeln!(s, "| dialect | {} ({residual}) |", c.dialect);
    let _ = writeln!(
        s,
        "| packed format | {} version {} |",
        c.format, c.format_version
    );
    let _ = writeln!(
        s,
        "| files | {} ({}) |\n",
        report.files + 1,
        human_bytes(report.total_bytes + file_len(&dir.join(INDEX_FILE)))
    );

    // Layers.
    s.push_str(
        "## L3 layers\n\n| layer | after decoder layer | rows (n_emb) | d_in | d_emb | d_up | table | \
         largest block | worst case per token | parts |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for l in &report.layers {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} rows | {} | {} |",
            l.name,
            l.layer_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into()),
            l.n_emb,
            l.d_in,
            l.d_emb,
            l.d_up,
            human_bytes(l.table_bytes),
            l.max_rows,
            human_bytes(l.worst_case_bytes_per_token),
            l.parts
        );
    }
    let lossy: Vec<_> = c
        .layers
        .iter()
        .filter_map(|l| l.conversion_error.as_ref().map(|e| (&l.name, e)))
        .collect();
    if !lossy.is_empty() {
        s.push_str("\nConversion error of the packed tables against the trained ones:\n\n");
        for (n, e) in lossy {
            let _ = writeln!(
                s,
                "- `{n}`: max abs {:.3e}, relative L2 {:.3e}",
                e.max_abs_error, e.relative_l2_error
            );
        }
    }
    s.push('\n');

    // Allocation.
    s.push_str("## Allocation\n\n");
    let a = &c.allocation;
    let method = a.method.as_deref().unwrap_or("unrecorded");
    let from = match a.source.as_str() {
        "checkpoint" => "the checkpoint's bounds buffers".to_string(),
        "file" => "an allocation file".to_string(),
        other => format!("`{other}`"),
    };
    let first_n_emb = c.layers.first().map(|l| l.n_emb).unwrap_or(0);
    let _ = writeln!(
        s,
        "How many rows each token owns was decided before training. Method: `{method}`, taken \
         from {from}; k_max {}; {:.2} rows per token on average, largest block {} rows.",
        c.k_max,
        first_n_emb as f64 / c.vocab_size.max(1) as f64,
        a.max_rows
    );
    if let Some(p) = &a.profile_sha256 {
        let _ = writeln!(s, "Corpus profile SHA-256: `{p}`.");
    }
    if let Some(t) = &a.tokenizer_sha256 {
        let _ = writeln!(s, "Tokenizer SHA-256: `{t}`.");
    }
    if !c.layers.is_empty() {
        let bounds = model.bounds(0)?;
        let rows: Vec<u32> = bounds.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
        let same = (1..c.layers.len()).all(|i| model.bounds(i).ok().as_ref() == Some(&bounds));
        let _ = writeln!(s, "\n| rows per token | tokens | rows |\n|---|---|---|");
        for b in histogram(&rows, c.k_max.max(1)) {
            if b.tokens > 0 {
                let _ = writeln!(s, "| {} | {} | {} |", b.label, b.tokens, b.rows);
            }
        }
        let _ = writeln!(
            s,
            "\n{}",
            if same {
                "Every L3 layer uses this allocation."
            } else {
                "The table shows the first L3 layer; the layers' allocations differ."
            }
        );
    }
    s.push('\n');

    // Files.
    s.push_str("## Files\n\n");
    s.push_str(
        "`l3kit upload` publishes only the files the index lists, the index itself and these \
         side files when the folder has them: `README.md`, `config.json`, `tokenizer.json`, \
         `tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json`, \
         `vocab.json`, `merges.txt`, `allocation.safetensors`, `meta_*.json`, `LICENSE*` and \
         `.gitattributes`. The model's files:\n\n| file | size |\n|---|---|\n",
    );
    let index_name = INDEX_FILE.to_string();
    let mut files: Vec<&String> = model.index.metadata.sha256.keys().collect();
    files.push(&index_name);
    files.sort();
    for f in files {
        let _ = writeln!(s, "| `{f}` | {} |", human_bytes(file_len(&dir.join(f))));
    }
    s.push('\n');

    // Loading.
    let layer0 = c.layers.first();
    s.push_str("## Loading\n\n### Python, with `safetensors`\n\n");
    s.push_str(
        "The dense tensors load like any sharded checkpoint (`model.safetensors.index.json` maps \
         each name to its shard). The L3 tables are described by the `l3` section of \
         `config.json`; one token's rows of one layer are read like this, touching only those \
         bytes:\n\n",
    );
    s.push_str("```python\nimport json\nfrom safetensors import safe_open\n\n");
    s.push_str("l3 = json.load(open(\"config.json\"))[\"l3\"]\n");
    let _ = writeln!(
        s,
        "layer = l3[\"layers\"][0]{}",
        layer0
            .map(|l| format!("  # {}", l.name))
            .unwrap_or_default()
    );
    s.push_str("token = 42\n\n");
    s.push_str(
        "part = next(p for p in layer[\"parts\"] if p[\"token_start\"] <= token < p[\"token_end\"])\n",
    );
    s.push_str("with safe_open(part[\"file\"], framework=\"pt\") as f:\n");
    s.push_str("    offsets = f.get_slice(part[\"offsets\"])[:]  # global row bounds of the part's tokens\n");
    s.push_str("    i = token - part[\"token_start\"]\n");
    s.push_str(
        "    lo, hi = int(offsets[i]) - part[\"row_start\"], int(offsets[i + 1]) - part[\"row_start\"]\n",
    );
    s.push_str(
        "    rows = f.get_slice(part[\"rows\"])[lo:hi]  # [rows of this token, row_width]\n",
    );
    if c.dtype == TableDtype::Int8 {
        s.push_str("    scales = f.get_slice(part[\"scales\"])[lo:hi]\n");
    }
    s.push_str("d_in = layer[\"d_in\"]\n");
    match (c.semantics.tied, c.dtype == TableDtype::Int8) {
        (false, false) => s.push_str("keys, values = rows[:, :d_in], rows[:, d_in:]\n"),
        (true, false) => s.push_str("keys = values = rows  # tied table\n"),
        (false, true) => s.push_str(
            "keys = rows[:, :d_in].float() * scales[:, 0:1]\n\
             values = rows[:, d_in:].float() * scales[:, 1:2]\n",
        ),
        (true, true) => s.push_str("keys = values = rows.float() * scales  # tied table\n"),
    }
    s.push_str("```\n\n");
    s.push_str("### l3kit\n\n```sh\n");
    let _ = writeln!(s, "hf download {repo} --local-dir {name}");
    let _ = writeln!(
        s,
        "l3kit inspect {name}             # layers, sizes, bytes fetched per token"
    );
    let _ = writeln!(
        s,
        "l3kit inspect --check {name}     # re-hash every file, check every invariant"
    );
    let _ = writeln!(
        s,
        "l3kit unpack {name} --out ckpt   # the checkpoint in its original ({}) layout",
        c.dialect
    );
    s.push_str("```\n\n");
    s.push_str(
        "The packed layout is specified in l3kit's `docs/format.md` (format version 1), precise \
         enough to write a reader in another language.\n",
    );
    Ok(s)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licences() {
        assert_eq!(clean_license("Apache-2.0").as_deref(), Some("apache-2.0"));
        assert_eq!(clean_license("mit").as_deref(), Some("mit"));
        assert_eq!(clean_license("x: y\nz"), None);
        assert_eq!(clean_license(""), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.00 KiB");
    }
}
