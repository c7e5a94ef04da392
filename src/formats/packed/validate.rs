//! The checks [`PackedModel::open`](super::PackedModel::open) makes of a packed folder's
//! `l3` section against itself and against the tensors present. Every number is related to
//! the others and to the tensors' dtypes and shapes (which the safetensors header parser has
//! already related to the bytes each file holds) before anything is allocated from it, so a
//! size made up in `config.json` is an error naming its field rather than an allocation.

use super::reader::PackedShards;
use super::{PackedConfig, PackedLayer, PackedPart, TableDtype};
use crate::formats::dtype::FloatDtype;
use crate::formats::safetensors::{parse_dtype, safe_relative, TensorInfo, TensorReader};
use crate::formats::semantics::Residual;
use crate::util::error::{Error, Result};
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The dialects a packed folder may record.
pub const DIALECTS: [&str; 4] = ["paper", "nanochat", "map:paper", "map:nanochat"];

/// The most precise place a deserialisation error of the `l3` section can be pinned to: the
/// layer or part whose own deserialisation fails, with serde's words.
pub(super) fn locate_serde_error(l3: &serde_json::Value) -> String {
    fn first_err<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Option<String> {
        serde_json::from_value::<T>(v.clone())
            .err()
            .map(|e| e.to_string())
    }
    if let Some(layers) = l3.get("layers").and_then(|l| l.as_array()) {
        for (i, layer) in layers.iter().enumerate() {
            if let Some(parts) = layer.get("parts").and_then(|p| p.as_array()) {
                for (j, part) in parts.iter().enumerate() {
                    if let Some(e) = first_err::<PackedPart>(part) {
                        return format!("l3.layers[{i}].parts[{j}]: {e}");
                    }
                }
            }
            for key in ["source", "params", "conversion_error"] {
                if let Some(v) = layer.get(key).filter(|v| !v.is_null()) {
                    let e = match key {
                        "source" => first_err::<super::SourceNames>(v),
                        "params" => first_err::<super::LayerParams>(v),
                        _ => first_err::<super::ConversionError>(v),
                    };
                    if let Some(e) = e {
                        return format!("l3.layers[{i}].{key}: {e}");
                    }
                }
            }
            if let Some(e) = first_err::<PackedLayer>(layer) {
                return format!("l3.layers[{i}]: {e}");
            }
        }
    }
    if let Some(v) = l3.get("semantics") {
        if let Some(e) = first_err::<super::Semantics>(v) {
            return format!("l3.semantics: {e}");
        }
    }
    if let Some(v) = l3.get("allocation") {
        if let Some(e) = first_err::<super::AllocationInfo>(v) {
            return format!("l3.allocation: {e}");
        }
    }
    match first_err::<PackedConfig>(l3) {
        Some(e) => format!("invalid \"l3\" section: {e}"),
        None => "invalid \"l3\" section".to_string(),
    }
}

/// The checks of [`PackedModel::open`] that relate the config to the tensors.
pub(super) fn validate(
    c: &PackedConfig,
    s: &PackedShards,
    config_path: &Path,
) -> Result<Vec<Vec<i64>>> {
    Validator { c, s, config_path }.run()
}

struct Validator<'a> {
    c: &'a PackedConfig,
    s: &'a PackedShards,
    config_path: &'a Path,
}

/// What a tensor name is used for, for messages about a name used twice.
type Roles = BTreeMap<String, String>;

impl Validator<'_> {
    fn bad(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::in_file(self.config_path, format!("{field}: {msg}"))
    }

    /// An error about tensor `name` of the file holding it, for the config field that named it.
    fn bad_tensor(&self, name: &str, field: &str, msg: impl std::fmt::Display) -> Error {
        match self.s.get(name) {
            Some(info) => Error::in_file(&info.file, format!("tensor {name} ({field}): {msg}")),
            None => self.bad(field, msg),
        }
    }

    fn tensor(&self, name: &str, field: &str) -> Result<&TensorInfo> {
        self.s.get(name).ok_or_else(|| {
            self.bad(
                field,
                format!("names tensor {name}, which no shard of the folder holds"),
            )
        })
    }

    /// Record that `name` plays `role`; a tensor may play one role only.
    fn claim(&self, roles: &mut Roles, name: &str, role: String) -> Result<()> {
        if let Some(other) = roles.get(name) {
            return Err(self.bad(
                &role,
                format!(
                    "names tensor {name}, which {other} names too: every layer has its own \
                     tensors, and each tensor plays one role"
                ),
            ));
        }
        roles.insert(name.to_string(), role);
        Ok(())
    }

    fn run(&self) -> Result<Vec<Vec<i64>>> {
        let c = self.c;
        if !DIALECTS.contains(&c.dialect.as_str()) {
            return Err(self.bad(
                "l3.dialect",
                format!(
                    "unknown dialect {:?} (expected {})",
                    c.dialect,
                    DIALECTS.join(", ")
                ),
            ));
        }
        if c.vocab_size == 0 || c.vocab_size > u32::MAX as u64 {
            return Err(self.bad(
                "l3.vocab_size",
                format!(
                    "is {}; it must be between 1 and {} (token ids are 32-bit)",
                    c.vocab_size,
                    u32::MAX
                ),
            ));
        }
        if c.k_max == 0 {
            return Err(self.bad("l3.k_max", "is 0; every token owns at least one row"));
        }
        let sem = &c.semantics;
        if !sem.norm_eps.is_finite() || sem.norm_eps < 0.0 {
            return Err(self.bad(
                "l3.semantics.norm_eps",
                format!("is {}; it must be a finite number >= 0", sem.norm_eps),
            ));
        }
        if !sem.score_scale.is_finite() {
            return Err(self.bad(
                "l3.semantics.score_scale",
                format!("is {}; it must be finite", sem.score_scale),
            ));
        }
        if c.allocation.max_rows == 0 || c.allocation.max_rows > c.k_max {
            return Err(self.bad(
                "l3.allocation.max_rows",
                format!(
                    "is {}; it must be between 1 and k_max {}",
                    c.allocation.max_rows, c.k_max
                ),
            ));
        }
        if c.layers.is_empty() {
            return Err(self.bad("l3.layers", "is empty: a packed model has L3 layers"));
        }
        let mut roles = Roles::new();
        let mut names = BTreeMap::new();
        let mut part_files = BTreeMap::new();
        let mut tables = BTreeSet::new();
        let mut all_bounds = Vec::with_capacity(c.layers.len());
        for (li, l) in c.layers.iter().enumerate() {
            let at = format!("l3.layers[{li}]");
            if l.name.is_empty() {
                return Err(self.bad(&format!("{at}.name"), "is empty"));
            }
            if let Some(first) = names.insert(l.name.as_str(), li) {
                return Err(self.bad(
                    &format!("{at}.name"),
                    format!("{:?} is also the name of l3.layers[{first}]", l.name),
                ));
            }
            let at = format!("{at} ({})", l.name);
            self.layer_shape(l, &at)?;
            let bounds = self.parts(l, &at, &mut roles, &mut tables, &mut part_files)?;
            all_bounds.push(bounds);
        }
        // Dense parameters: after every table tensor has been claimed, so a parameter that
        // names a table tensor is reported as such.
        for (li, l) in c.layers.iter().enumerate() {
            let at = format!("l3.layers[{li}] ({})", l.name);
            self.params(l, &at, &mut roles, &part_files)?;
        }
        self.lambdas(&roles, &part_files)?;
        self.unpack_names(&tables)?;
        let widest = all_bounds
            .iter()
            .flat_map(|b| b.windows(2).map(|w| w[1] - w[0]))
            .max()
            .unwrap_or(0);
        if widest != c.allocation.max_rows as i64 {
            return Err(self.bad(
                "l3.allocation.max_rows",
                format!(
                    "is {}, but the largest block in the offsets tensors has {widest} rows",
                    c.allocation.max_rows
                ),
            ));
        }
        Ok(all_bounds)
    }

    /// The layer's sizes against each other (the tensors come later).
    fn layer_shape(&self, l: &PackedLayer, at: &str) -> Result<()> {
        let c = self.c;
        for (field, v) in [("d_in", l.d_in), ("d_emb", l.d_emb), ("d_up", l.d_up)] {
            if v == 0 {
                return Err(self.bad(&format!("{at}.{field}"), "is 0"));
            }
        }
        let tied = c.semantics.tied;
        if tied && l.d_emb != l.d_in {
            return Err(self.bad(
                &format!("{at}.d_emb"),
                format!(
                    "is {}, but the table is tied (semantics.tied): keys and values are one \
                     table, so d_emb = d_in = {}",
                    l.d_emb, l.d_in
                ),
            ));
        }
        let width = if tied {
            Some(l.d_in)
        } else {
            l.d_in.checked_add(l.d_emb)
        };
        if width != Some(l.row_width) {
            let why = if tied {
                format!(
                    "the table is tied (semantics.tied), so a row is d_in = {} values",
                    l.d_in
                )
            } else {
                format!(
                    "a row is [key | value], d_in {} + d_emb {} values",
                    l.d_in, l.d_emb
                )
            };
            return Err(self.bad(
                &format!("{at}.row_width"),
                format!("is {}, but {why}", l.row_width),
            ));
        }
        if l.row_width
            .checked_mul(c.dtype.value_bytes())
            .and_then(|b| usize::try_from(b).ok())
            .is_none()
        {
            return Err(self.bad(&format!("{at}.row_width"), "is too large"));
        }
        if l.n_emb < c.vocab_size {
            return Err(self.bad(
                &format!("{at}.n_emb"),
                format!(
                    "is {}, fewer than vocab_size {}: every token owns at least one row",
                    l.n_emb, c.vocab_size
                ),
            ));
        }
        if let Some(most) = c.vocab_size.checked_mul(c.k_max as u64) {
            if l.n_emb > most {
                return Err(self.bad(
                    &format!("{at}.n_emb"),
                    format!(
                        "is {}, more than vocab_size {} x k_max {}",
                        l.n_emb, c.vocab_size, c.k_max
                    ),
                ));
            }
        }
        let src = &l.source;
        if src.keys.is_empty() {
            return Err(self.bad(&format!("{at}.source.keys"), "is empty"));
        }
        match (&src.values, tied) {
            (Some(_), true) => {
                return Err(self.bad(
                    &format!("{at}.source.values"),
                    "names a values tensor, but the table is tied (semantics.tied)",
                ))
            }
            (None, false) => {
                return Err(self.bad(
                    &format!("{at}.source.values"),
                    "is null, but the table is not tied: the source had a values tensor",
                ))
            }
            (Some(v), false) if v.is_empty() => {
                return Err(self.bad(&format!("{at}.source.values"), "is empty"))
            }
            _ => {}
        }
        if parse_dtype(&src.dtype).and_then(FloatDtype::of).is_none() {
            return Err(self.bad(
                &format!("{at}.source.dtype"),
                format!("is {:?}; expected F32, BF16, F16 or F64", src.dtype),
            ));
        }
        if let Some(e) = &l.conversion_error {
            for (field, v) in [
                ("max_abs_error", e.max_abs_error),
                ("relative_l2_error", e.relative_l2_error),
            ] {
                // NaN (null) records tables with non-finite values; an error is never < 0.
                if v < 0.0 {
                    return Err(self.bad(
                        &format!("{at}.conversion_error.{field}"),
                        format!("is {v}; an error is a number >= 0 (or null)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The layer's parts: their ranges, their tensors, and their offsets (read and checked).
    /// Returns the layer's bounds.
    fn parts(
        &self,
        l: &PackedLayer,
        at: &str,
        roles: &mut Roles,
        tables: &mut BTreeSet<String>,
        part_files: &mut BTreeMap<usize, String>,
    ) -> Result<Vec<i64>> {
        let c = self.c;
        if l.parts.is_empty() {
            return Err(self.bad(&format!("{at}.parts"), "is empty"));
        }
        let table_dtype = c.dtype.stored_dtype();
        let scale_parts: u64 = if c.semantics.tied { 1 } else { 2 };
        let (mut next_token, mut next_row) = (0u64, 0u64);
        let mut bounds: Vec<i64> = Vec::new();
        for (pi, p) in l.parts.iter().enumerate() {
            let pat = format!("{at}.parts[{pi}]");
            let field = |f: &str| format!("{pat}.{f}");
            if p.token_start != next_token || p.row_start != next_row {
                return Err(self.bad(
                    &pat,
                    format!(
                        "starts at token {} row {}, but the previous part ends at token \
                         {next_token} row {next_row}: parts are contiguous, from token 0 row 0",
                        p.token_start, p.row_start
                    ),
                ));
            }
            if p.token_end <= p.token_start || p.token_end > c.vocab_size {
                return Err(self.bad(
                    &field("token_end"),
                    format!(
                        "is {}; it must be above token_start {} and at most vocab_size {}",
                        p.token_end, p.token_start, c.vocab_size
                    ),
                ));
            }
            let tokens = p.token_end - p.token_start;
            if p.row_end < p.row_start || p.row_end > l.n_emb {
                return Err(self.bad(
                    &field("row_end"),
                    format!(
                        "is {}; it must be at least row_start {} and at most n_emb {}",
                        p.row_end, p.row_start, l.n_emb
                    ),
                ));
            }
            let rows = p.row_end - p.row_start;
            if rows < tokens || tokens.checked_mul(c.k_max as u64).is_some_and(|m| rows > m) {
                return Err(self.bad(
                    &pat,
                    format!(
                        "holds {rows} rows for {tokens} tokens; every token owns 1 to k_max {} rows",
                        c.k_max
                    ),
                ));
            }
            next_token = p.token_end;
            next_row = p.row_end;

            match (&p.scales, c.dtype == TableDtype::Int8) {
                (None, true) => {
                    return Err(self.bad(
                        &field("scales"),
                        "is null, but int8 tables need their per-row scales",
                    ))
                }
                (Some(_), false) => {
                    return Err(self.bad(
                        &field("scales"),
                        format!("names scales, but the tables are {}", c.dtype.name()),
                    ))
                }
                _ => {}
            }

            // The part's file holds exactly its tensors, and no other part uses it.
            let file = safe_relative(&p.file)
                .map_err(|why| self.bad(&field("file"), format!("{:?} is {why}", p.file)))?;
            let mut own = vec![(&p.rows, "rows"), (&p.offsets, "offsets")];
            if let Some(s) = &p.scales {
                own.push((s, "scales"));
            }
            let mut fi = None;
            for (name, what) in &own {
                self.claim(roles, name, field(what))?;
                tables.insert(name.to_string());
                let i = self.tensor(name, &field(what))?;
                let holder = self.s.file_of(&i.name);
                let rel = holder.and_then(|h| self.s.rel_path(h));
                if rel != Some(file.as_path()) {
                    return Err(self.bad(
                        &field(what),
                        format!(
                            "names tensor {name}, which is in {}, not in the part's file {}",
                            rel.map(|r| r.display().to_string()).unwrap_or_default(),
                            p.file
                        ),
                    ));
                }
                fi = holder;
            }
            let fi = fi.unwrap_or(usize::MAX);
            if let Some(other) = part_files.insert(fi, pat.clone()) {
                return Err(self.bad(
                    &field("file"),
                    format!(
                        "{} is also the file of {other}: every table part has a file of its own",
                        p.file
                    ),
                ));
            }
            let held = self.s.tensors_in_file(fi);
            if held != own.len() {
                return Err(self.bad(
                    &field("file"),
                    format!(
                        "{} holds {held} tensors; a table part's file holds exactly its rows, \
                         offsets and (int8) scales",
                        p.file
                    ),
                ));
            }

            let rows_t = self.tensor(&p.rows, &field("rows"))?;
            if rows_t.dtype != table_dtype || !shape_is(&rows_t.shape, &[rows, l.row_width]) {
                return Err(self.bad_tensor(
                    &p.rows,
                    &field("rows"),
                    format!(
                        "is {:?} {:?}, but the config says {table_dtype:?} [{rows}, {}] \
                         (rows {}..{}, row_width {})",
                        rows_t.dtype,
                        rows_t.shape,
                        l.row_width,
                        p.row_start,
                        p.row_end,
                        l.row_width
                    ),
                ));
            }
            if let Some(s) = &p.scales {
                let t = self.tensor(s, &field("scales"))?;
                if t.dtype != Dtype::F32 || !shape_is(&t.shape, &[rows, scale_parts]) {
                    return Err(self.bad_tensor(
                        s,
                        &field("scales"),
                        format!(
                            "is {:?} {:?}, but the config says F32 [{rows}, {scale_parts}]",
                            t.dtype, t.shape
                        ),
                    ));
                }
            }
            let off_t = self.tensor(&p.offsets, &field("offsets"))?;
            if off_t.dtype != Dtype::I64 || !shape_is(&off_t.shape, &[tokens + 1]) {
                return Err(self.bad_tensor(
                    &p.offsets,
                    &field("offsets"),
                    format!(
                        "is {:?} {:?}, but the config says I64 [{}] (tokens {}..{}, plus one)",
                        off_t.dtype,
                        off_t.shape,
                        tokens + 1,
                        p.token_start,
                        p.token_end
                    ),
                ));
            }
            // The shape matched the data present, so this read is as large as the file says.
            let bytes = self.s.read_all(&p.offsets)?;
            let offsets = bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
            let file_err = |msg: String| self.bad_tensor(&p.offsets, &field("offsets"), msg);
            let mut prev: Option<i64> = None;
            for (k, v) in offsets.enumerate() {
                let token = p.token_start + k as u64;
                match prev {
                    None => {
                        if v != p.row_start as i64 {
                            return Err(file_err(format!(
                                "starts at {v}, but the part starts at row_start {}",
                                p.row_start
                            )));
                        }
                        if bounds.is_empty() {
                            bounds.push(v);
                        }
                    }
                    Some(before) => {
                        let owned = v.checked_sub(before).unwrap_or(-1);
                        if owned < 1 || owned > c.k_max as i64 {
                            return Err(file_err(format!(
                                "token {} would own rows {before}..{v} ({owned}); every token \
                                 owns 1 to k_max {} rows",
                                token - 1,
                                c.k_max
                            )));
                        }
                        bounds.push(v);
                    }
                }
                prev = Some(v);
            }
            if prev != Some(p.row_end as i64) {
                return Err(file_err(format!(
                    "ends at {}, but the part ends at row_end {}",
                    prev.unwrap_or(0),
                    p.row_end
                )));
            }
        }
        if next_token != c.vocab_size || next_row != l.n_emb {
            return Err(self.bad(
                &format!("{at}.parts"),
                format!(
                    "end at token {next_token} row {next_row}, but the layer has vocab_size {} \
                     tokens and n_emb {} rows",
                    c.vocab_size, l.n_emb
                ),
            ));
        }
        Ok(bounds)
    }

    /// The layer's dense parameters exist in the dense shards with the shapes its sizes give.
    fn params(
        &self,
        l: &PackedLayer,
        at: &str,
        roles: &mut Roles,
        part_files: &BTreeMap<usize, String>,
    ) -> Result<()> {
        let p = &l.params;
        let mix_width = l.d_up.checked_add(l.d_in);
        let mut wanted: Vec<(&str, &String, Vec<Option<u64>>)> = vec![
            ("w_up", &p.w_up, vec![Some(l.d_up), Some(l.d_emb)]),
            ("w_mix", &p.w_mix, vec![Some(l.d_in), mix_width]),
        ];
        if self.c.semantics.norm_weights {
            for (key, name) in [("norm_in", &p.norm_in), ("norm_out", &p.norm_out)] {
                if name.is_none() {
                    return Err(self.bad(
                        &format!("{at}.params.{key}"),
                        "is null, but semantics.norm_weights says the norms have weights",
                    ));
                }
            }
        }
        if let Some(n) = &p.norm_in {
            wanted.push(("norm_in", n, vec![Some(l.d_in)]));
        }
        if let Some(n) = &p.norm_out {
            wanted.push(("norm_out", n, vec![Some(l.d_up)]));
        }
        for (key, name, shape) in wanted {
            let field = format!("{at}.params.{key}");
            self.claim(roles, name, field.clone())?;
            let t = self.tensor(name, &field)?;
            self.dense(name, &field, part_files)?;
            let want: Option<Vec<u64>> = shape.into_iter().collect();
            let fits = want.as_ref().is_some_and(|w| shape_is(&t.shape, w));
            if !fits || FloatDtype::of(t.dtype).is_none() {
                let want = want
                    .map(|w| format!("{w:?}"))
                    .unwrap_or_else(|| "a shape too large to exist".into());
                return Err(self.bad_tensor(
                    name,
                    &field,
                    format!(
                        "is {:?} {:?}, but layer {} (d_in {}, d_emb {}, d_up {}) needs floats {want}",
                        t.dtype, t.shape, l.name, l.d_in, l.d_emb, l.d_up
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A dense parameter sits in a dense shard, never in a table part's file.
    fn dense(&self, name: &str, field: &str, part_files: &BTreeMap<usize, String>) -> Result<()> {
        if let Some(part) = self.s.file_of(name).and_then(|f| part_files.get(&f)) {
            return Err(self.bad(
                field,
                format!("names tensor {name}, which is in the file of table part {part}"),
            ));
        }
        Ok(())
    }

    /// Every lambda: present exactly for the layers that need it, naming an element of a float
    /// tensor that holds the recorded value.
    fn lambdas(&self, roles: &Roles, part_files: &BTreeMap<usize, String>) -> Result<()> {
        let add = self.c.semantics.residual == Residual::AddLambda;
        let mut used: BTreeMap<(String, usize), String> = BTreeMap::new();
        for (li, l) in self.c.layers.iter().enumerate() {
            let at = format!("l3.layers[{li}] ({})", l.name);
            let value_field = format!("{at}.lambda");
            let param_field = format!("{at}.params.lambda");
            if add && l.lambda.is_none() {
                return Err(self.bad(
                    &value_field,
                    "is null, but semantics.residual is add_lambda: the layer adds lambda x \
                     its output to the hidden state and needs its lambda",
                ));
            }
            if self.c.semantics.residual == Residual::Add && l.lambda.is_some() {
                return Err(self.bad(
                    &value_field,
                    "has a value, but semantics.residual is add, which adds the output \
                     unscaled: a scaled residual is add_lambda",
                ));
            }
            let (name, index) = match (&l.params.lambda, l.lambda) {
                (None, None) => continue,
                (Some(_), None) => {
                    return Err(self.bad(
                        &value_field,
                        "is null, but params.lambda names the tensor holding it",
                    ))
                }
                (None, Some(_)) => {
                    return Err(self.bad(
                        &param_field,
                        "is null, but lambda has a value: params.lambda names the tensor \
                         element it comes from",
                    ))
                }
                (Some((n, i)), Some(_)) => (n, *i),
            };
            let value = l.lambda.unwrap_or(f64::NAN);
            if !value.is_finite() {
                return Err(self.bad(&value_field, format!("is {value}; it must be finite")));
            }
            if let Some(role) = roles.get(name) {
                return Err(self.bad(
                    &param_field,
                    format!("names tensor {name}, which {role} names too"),
                ));
            }
            if let Some(other) = used.insert((name.clone(), index), param_field.clone()) {
                return Err(self.bad(
                    &param_field,
                    format!("names {name}[{index}], which {other} names too"),
                ));
            }
            let t = self.tensor(name, &param_field)?;
            self.dense(name, &param_field, part_files)?;
            let float = t.float_dtype().map_err(|e| {
                self.bad_tensor(name, &param_field, format!("cannot hold lambdas: {e}"))
            })?;
            if t.shape.len() != 1 || index >= t.shape[0] {
                return Err(self.bad_tensor(
                    name,
                    &param_field,
                    format!(
                        "has shape {:?}; lambdas are one vector, and index {index} must be inside it",
                        t.shape
                    ),
                ));
            }
            let size = float.size();
            let mut buf = Vec::new();
            self.s.read_range(name, index * size, size, &mut buf)?;
            let mut v = Vec::with_capacity(1);
            crate::formats::dtype::decode_f32(float, &buf, &mut v);
            let stored = v.first().copied().unwrap_or(f32::NAN);
            // `pack --other-dtype` may store the lambdas in a narrower dtype than the source
            // value recorded here, so the two agree once the value is rounded to the tensor's
            // dtype.
            let mut rounded = Vec::with_capacity(1);
            let mut bytes = Vec::new();
            let narrow = match float {
                FloatDtype::F64 => FloatDtype::F32,
                f => f,
            };
            crate::formats::dtype::encode_f32(narrow.dtype(), &[value as f32], &mut bytes);
            crate::formats::dtype::decode_f32(narrow, &bytes, &mut rounded);
            if rounded.first() != Some(&stored) {
                return Err(self.bad(
                    &value_field,
                    format!("is {value}, but {name}[{index}] holds {stored}"),
                ));
            }
        }
        Ok(())
    }

    /// The names `unpack` writes (every tensor that passes through, and the tables and bounds
    /// rebuilt under their source names) are distinct, so its output is a valid checkpoint.
    fn unpack_names(&self, tables: &BTreeSet<String>) -> Result<()> {
        let mut out: BTreeSet<&str> = self
            .s
            .tensors()
            .into_iter()
            .map(|t| t.name.as_str())
            .filter(|n| !tables.contains(*n))
            .collect();
        for (li, l) in self.c.layers.iter().enumerate() {
            let at = format!("l3.layers[{li}] ({}).source", l.name);
            let mut names = vec![("keys", Some(&l.source.keys))];
            names.push(("values", l.source.values.as_ref()));
            names.push(("bounds", l.source.bounds.as_ref()));
            for (key, name) in names {
                let Some(name) = name else { continue };
                if !out.insert(name) {
                    return Err(self.bad(
                        &format!("{at}.{key}"),
                        format!(
                            "is {name}, a name the unpacked checkpoint already has (a tensor \
                             of the folder, or another table): unpack would write it twice"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Does a tensor shape equal the wanted dimensions (compared without narrowing casts)?
fn shape_is(shape: &[usize], want: &[u64]) -> bool {
    shape.len() == want.len() && shape.iter().zip(want).all(|(&a, &b)| a as u64 == b)
}
