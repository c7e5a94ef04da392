//! `l3kit._native`: the bindings under the Python package `l3kit`.
//!
//! Each function here calls the library and hands back arrays, native objects or the library's
//! serde summaries as JSON text; `l3kit/__init__.py` turns inputs into arrays, JSON into Python
//! objects and holds the documentation. Long work runs with the GIL released.

use l3kit::allocate::plan::evaluate;
use l3kit::allocate::plan::sweep::{self, PlanOptions};
use l3kit::allocate::plan::{self as planner, CostBudget};
use l3kit::allocate::{self, AllocateOptions, FillPolicy, LayerShape, Method};
use l3kit::checkpoint::Checkpoint;
use l3kit::corpus::tokens::StreamOptions;
use l3kit::formats::dtype::TableDtype;
use l3kit::formats::packed::PackedModel as Packed;
use l3kit::profile::{
    self as profiling, IdSplit, InputFormat, LzwVariant, ProfileOptions, RecordedOptions,
    SequenceScanner,
};
use l3kit::serve::packed::PackedStore;
use l3kit::serve::{Blocks, TableSource};
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::progress::Ui;
use l3kit::{Allocation, Error, Profile};
use numpy::ndarray::ArrayView1;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

create_exception!(
    l3kit,
    L3kitError,
    PyException,
    "Base class of every error l3kit raises; the message is l3kit's."
);
create_exception!(
    l3kit,
    BadInputError,
    L3kitError,
    "Input that cannot be used (the CLI's exit code 2): a missing or malformed file, an \
     impossible option, a token id outside the vocabulary."
);
create_exception!(
    l3kit,
    CheckFailedError,
    L3kitError,
    "A check that ran to completion and found a mismatch (the CLI's exit code 1)."
);

fn py_err(e: Error) -> PyErr {
    match e {
        Error::Check(m) => CheckFailedError::new_err(m),
        Error::Other(m) => L3kitError::new_err(m),
        e => BadInputError::new_err(e.to_string()),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for l3kit::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

fn bad(msg: impl Into<String>) -> PyErr {
    BadInputError::new_err(msg.into())
}

fn to_json<T: Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| L3kitError::new_err(e.to_string()))
}

fn ui(progress: bool) -> Ui {
    Ui { quiet: !progress }
}

/// A choice among a CLI value enum, spelled as on the command line (`round-robin`, `bf16`).
fn choice<T: clap::ValueEnum>(value: &str, name: &str) -> PyResult<T> {
    T::from_str(value, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        bad(format!(
            "{name}={value:?} is not one of: {}",
            names.join(", ")
        ))
    })
}

fn opt_choice<T: clap::ValueEnum>(value: Option<&str>, name: &str) -> PyResult<Option<T>> {
    value.map(|v| choice(v, name)).transpose()
}

// ---- LZW over sequences the caller holds --------------------------------------------------

/// The LZW scan over sequences handed over in batches, then the paper's walk.
#[pyclass(module = "l3kit._native")]
struct LzwScanner {
    /// None once `allocate` consumed it.
    inner: Option<SequenceScanner>,
}

impl LzwScanner {
    fn scanner(&mut self) -> PyResult<&mut SequenceScanner> {
        self.inner
            .as_mut()
            .ok_or_else(|| bad("this scanner's allocation was already computed"))
    }
}

#[pymethods]
impl LzwScanner {
    #[new]
    fn new(vocab_size: u32) -> PyResult<Self> {
        Ok(LzwScanner {
            inner: Some(SequenceScanner::new(vocab_size, LzwVariant::Reference).py()?),
        })
    }

    /// Scan the sequences `ids[offsets[i]..offsets[i + 1]]`, in order.
    fn scan_batch(
        &mut self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u32>,
        offsets: PyReadonlyArray1<'_, u64>,
    ) -> PyResult<()> {
        let ids = ids.as_slice()?;
        let offsets = offsets.as_slice()?;
        let bounded = offsets.first().is_none_or(|&o| o == 0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().is_none_or(|&o| o == ids.len() as u64);
        if !bounded {
            return Err(bad(
                "offsets must rise from 0 to the number of ids (one more entry than sequences)",
            ));
        }
        let scanner = self.scanner()?;
        py.detach(|| {
            offsets.windows(2).try_for_each(|w| {
                let n = scanner.sequences_seen();
                scanner.scan(&ids[w[0] as usize..w[1] as usize], || {
                    format!("sequence {n}")
                })
            })
        })
        .py()
    }

    /// Scan one flat array cut into sequences by `separator` (which belongs to none; empty
    /// sequences are dropped) or into runs of `seq_len` ids (the last may be shorter), as
    /// `profile` cuts id files.
    #[pyo3(signature = (ids, separator=None, seq_len=None))]
    fn scan_flat(
        &mut self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u32>,
        separator: Option<u32>,
        seq_len: Option<usize>,
    ) -> PyResult<()> {
        let ids = ids.as_slice()?;
        let split = match (separator, seq_len) {
            (Some(_), Some(_)) => return Err(bad("give separator= or seq_len=, not both")),
            (Some(s), None) => IdSplit::Separator(s),
            (None, Some(0)) => return Err(bad("seq_len must be at least 1")),
            (None, Some(n)) => IdSplit::SeqLen(n),
            (None, None) => return Err(bad("a flat array needs separator= or seq_len=")),
        };
        let scanner = self.scanner()?;
        py.detach(|| {
            let mut scan = |seq: &[u32], start: usize| {
                let n = scanner.sequences_seen();
                scanner.scan(seq, || format!("sequence {n} (starting at id {start})"))
            };
            match split {
                IdSplit::SeqLen(n) => ids
                    .chunks(n)
                    .enumerate()
                    .try_for_each(|(i, seq)| scan(seq, i * n)),
                IdSplit::Separator(sep) => {
                    let mut start = 0;
                    for seq in ids.split(|&t| t == sep) {
                        if !seq.is_empty() {
                            scan(seq, start)?;
                        }
                        start += seq.len() + 1;
                    }
                    Ok(())
                }
            }
        })
        .py()
    }

    /// The LZW allocation's bounds (vocab + 1, int64).
    #[pyo3(signature = (n_emb, k_max, fill=None))]
    fn allocate<'py>(
        &mut self,
        py: Python<'py>,
        n_emb: u64,
        k_max: u32,
        fill: Option<&str>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let fill: Option<FillPolicy> = opt_choice(fill, "fill")?;
        let scanner = self.scanner()?;
        let vocab = u64::from(scanner.vocab());
        allocate::check_budget(vocab, n_emb, k_max)
            .map_err(|e| bad(format!("n_emb={n_emb}, k_max={k_max}: {e}")))?;
        let scanner = self.inner.take().expect("checked above");
        let alloc = py
            .detach(|| {
                // Provenance as for an id file cut by the caller: nothing to record but the scan.
                let options = RecordedOptions {
                    field: None,
                    add_special_tokens: false,
                    split: None,
                    max_tokens: None,
                    lzw_variant: LzwVariant::Reference,
                };
                let profile = scanner.into_profile(None, Vec::new(), options);
                allocate::allocate(
                    &profile,
                    &AllocateOptions {
                        n_emb,
                        k_max,
                        method: Method::Lzw,
                        fill,
                    },
                )
            })
            .py()?;
        Ok(alloc.bounds().to_vec().into_pyarray(py))
    }
}

// ---- profiles and allocations -------------------------------------------------------------

#[pyclass(module = "l3kit._native")]
struct NativeProfile {
    profile: Profile,
}

#[pyclass(module = "l3kit._native")]
struct NativeAllocation {
    alloc: Allocation,
    /// What `allocate --method optimal` adds to the file's metadata.
    extra: Vec<(String, String)>,
}

fn shape(
    d_in: Option<u64>,
    d_emb: Option<u64>,
    tied: bool,
    dtype: &str,
) -> PyResult<Option<LayerShape>> {
    let dtype: TableDtype = choice(dtype, "dtype")?;
    Ok(d_in.map(|d_in| LayerShape {
        d_in,
        d_emb: d_emb.unwrap_or(if tied { d_in } else { (d_in / 2).max(1) }),
        tied,
        dtype,
    }))
}

fn tokenizer_for(
    profile: &Profile,
    profile_name: &str,
    tokenizer: Option<PathBuf>,
) -> PyResult<Option<tokenizers::Tokenizer>> {
    tokenizer
        .map(|path| {
            profile.check_tokenizer(Path::new(profile_name), &path)?;
            Ok(profiling::load_tokenizer(&path)?.0)
        })
        .transpose()
        .py()
}

#[pymethods]
impl NativeProfile {
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let profile = py.detach(|| Profile::read(&path)).py()?;
        Ok(NativeProfile { profile })
    }

    /// Write the profile, never over one of the files it was made from.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inputs: Vec<PathBuf> = self
            .profile
            .meta
            .inputs
            .iter()
            .map(|i| PathBuf::from(&i.path))
            .collect();
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        py.detach(|| {
            check_output(&path, &inputs, OutputKind::File, "path")?;
            self.profile.write(&path)
        })
        .py()
    }

    fn summary_json(&self) -> PyResult<String> {
        to_json(&profiling::summary(&self.profile))
    }

    fn meta_json(&self) -> PyResult<String> {
        to_json(&self.profile.meta)
    }

    #[getter]
    fn vocab_size(&self) -> u32 {
        self.profile.meta.vocab_size
    }

    #[getter]
    fn content_sha256(&self) -> String {
        self.profile.content_sha256.clone()
    }

    fn unigram<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.profile.unigram.clone().into_pyarray(py)
    }

    /// `allocate`: returns the allocation and its report (what `--json` prints).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (name, n_emb, rows_per_token, k_max, method, fill, mean_rows,
        max_bytes_per_token, tokenizer, d_in, d_emb, tied, dtype))]
    fn allocate(
        &self,
        py: Python<'_>,
        name: &str,
        n_emb: Option<u64>,
        rows_per_token: Option<f64>,
        k_max: u32,
        method: &str,
        fill: Option<&str>,
        mean_rows: Option<f64>,
        max_bytes_per_token: Option<u64>,
        tokenizer: Option<PathBuf>,
        d_in: Option<u64>,
        d_emb: Option<u64>,
        tied: bool,
        dtype: &str,
    ) -> PyResult<(NativeAllocation, String)> {
        let method: Method = choice(method, "method")?;
        let fill: Option<FillPolicy> = opt_choice(fill, "fill")?;
        let shape = shape(d_in, d_emb, tied, dtype)?;
        let profile = &self.profile;
        let tokenizer = tokenizer_for(profile, name, tokenizer)?;
        let vocab = u64::from(profile.meta.vocab_size);
        let n_emb = match (n_emb, rows_per_token) {
            (Some(_), Some(_)) => return Err(bad("give n_emb= or rows_per_token=, not both")),
            (Some(n), None) => {
                allocate::check_budget(vocab, n, k_max)
                    .map_err(|e| bad(format!("n_emb={n}: {e}")))?;
                n
            }
            (None, Some(r)) => allocate::n_emb_for_ratio(r, vocab, k_max, "rows_per_token").py()?,
            (None, None) => return Err(bad("give the budget: n_emb= or rows_per_token=")),
        };
        if let Some(s) = shape {
            s.layer_bytes(n_emb).py()?;
        }
        let budget = match (mean_rows, max_bytes_per_token) {
            (Some(_), Some(_)) => {
                return Err(bad("give mean_rows= or max_bytes_per_token=, not both"))
            }
            (None, None) => None,
            _ if method != Method::Optimal => {
                return Err(bad(
                    "mean_rows= and max_bytes_per_token= budget the optimal allocation: add method=\"optimal\"",
                ))
            }
            (Some(rows), None) => Some(CostBudget::MeanRows { rows }),
            (None, Some(b)) => {
                let s = shape.ok_or_else(|| {
                    bad("max_bytes_per_token= needs the layer shape to price a row: give d_in= (and d_emb=, tied=, dtype=)")
                })?;
                Some(CostBudget::BytesPerToken {
                    bytes: b as f64,
                    row_bytes: s.row_bytes().py()?,
                })
            }
        };
        py.detach(|| {
            #[derive(Serialize)]
            struct Out<'a> {
                #[serde(flatten)]
                report: &'a allocate::AllocationReport,
                #[serde(skip_serializing_if = "Option::is_none")]
                planner: Option<&'a planner::OptimalSummary>,
            }
            let (alloc, opt) = if method == Method::Optimal {
                let (alloc, opt) = planner::allocate_optimal(profile, n_emb, k_max, budget)?;
                (alloc, Some(opt))
            } else {
                let opts = AllocateOptions {
                    n_emb,
                    k_max,
                    method,
                    fill,
                };
                (allocate::allocate(profile, &opts)?, None)
            };
            let report =
                allocate::report(&alloc, Some(&profile.unigram), shape, tokenizer.as_ref())?;
            let json = serde_json::to_string(&Out {
                report: &report,
                planner: opt.as_ref().map(|o| &o.summary),
            })
            .map_err(|e| Error::Other(e.to_string()))?;
            let extra = opt.map(|o| o.metadata()).unwrap_or_default();
            Ok((NativeAllocation { alloc, extra }, json))
        })
        .py()
    }

    /// `evaluate` with this profile as the held-out one.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (name, alloc, alloc_name, train, train_name, tokenizer, d_in, d_emb,
        tied, dtype, top))]
    fn evaluate(
        &self,
        py: Python<'_>,
        name: &str,
        alloc: &NativeAllocation,
        alloc_name: &str,
        train: Option<PyRef<'_, NativeProfile>>,
        train_name: &str,
        tokenizer: Option<PathBuf>,
        d_in: Option<u64>,
        d_emb: Option<u64>,
        tied: bool,
        dtype: &str,
        top: usize,
    ) -> PyResult<String> {
        let shape = shape(d_in, d_emb, tied, dtype)?;
        let tokenizer = tokenizer_for(&self.profile, name, tokenizer)?;
        let train = train.as_ref().map(|t| &t.profile);
        py.detach(|| {
            evaluate::evaluate(
                &alloc.alloc,
                Path::new(alloc_name),
                &self.profile,
                Path::new(name),
                train.zip(Some(Path::new(train_name))),
                shape,
                tokenizer.as_ref(),
                top,
            )
        })
        .py()
        .and_then(|r| to_json(&r))
    }
}

#[pymethods]
impl NativeAllocation {
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let alloc = py.detach(|| Allocation::read(&path)).py()?;
        Ok(NativeAllocation {
            alloc,
            extra: Vec::new(),
        })
    }

    fn bounds<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.alloc.bounds().to_vec().into_pyarray(py)
    }

    fn meta_json(&self) -> PyResult<String> {
        to_json(&self.alloc.meta)
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            check_output(&path, &[], OutputKind::File, "path")?;
            self.alloc.write_with_metadata(&path, &self.extra)
        })
        .py()
    }
}

/// `profile`: tokenise and scan; returns the profile and its summary.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (inputs, tokenizer, format, field, vocab_size, separator, seq_len,
    max_tokens, add_special_tokens, max_sequence_bytes, lzw, out, progress))]
fn profile(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    tokenizer: Option<PathBuf>,
    format: Option<&str>,
    field: Option<String>,
    vocab_size: Option<u32>,
    separator: Option<u32>,
    seq_len: Option<usize>,
    max_tokens: Option<u64>,
    add_special_tokens: bool,
    max_sequence_bytes: u64,
    lzw: &str,
    out: Option<PathBuf>,
    progress: bool,
) -> PyResult<(NativeProfile, String)> {
    let split = match (separator, seq_len) {
        (Some(_), Some(_)) => return Err(bad("give separator= or seq_len=, not both")),
        (Some(s), None) => Some(IdSplit::Separator(s)),
        (None, Some(0)) => return Err(bad("seq_len must be at least 1")),
        (None, Some(n)) => Some(IdSplit::SeqLen(n)),
        (None, None) => None,
    };
    if let Some(out) = &out {
        // Before the work, as the CLI does: a run that cannot write its output does not start.
        let mut given: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        given.extend(tokenizer.as_deref());
        check_output(out, &given, OutputKind::File, "out").py()?;
    }
    let opts = ProfileOptions {
        stream: StreamOptions {
            inputs,
            format: opt_choice::<InputFormat>(format, "format")?,
            field,
            tokenizer,
            vocab_size,
            add_special_tokens,
            split,
            max_tokens,
            max_sequence_bytes: usize::try_from(max_sequence_bytes).unwrap_or(usize::MAX),
        },
        variant: choice(lzw, "lzw")?,
        max_memory: None,
    };
    let (profile, summary) = py
        .detach(|| {
            let (profile, summary) = profiling::run(&opts, &ui(progress))?;
            if let Some(out) = &out {
                profile.write(out)?;
            }
            Ok((profile, summary))
        })
        .py()?;
    Ok((NativeProfile { profile }, to_json(&summary)?))
}

/// `plan`: the sweep, written to `out`; returns the report (what `--json` prints).
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (train, train_name, heldout, heldout_name, out, rows_per_token, mean_rows,
    budgets, k_max, d_in, d_emb, tied, dtype, paper_rows_per_token, rows_plot_mean_rows, fill,
    progress))]
fn plan(
    py: Python<'_>,
    train: PyRef<'_, NativeProfile>,
    train_name: PathBuf,
    heldout: Option<PyRef<'_, NativeProfile>>,
    heldout_name: PathBuf,
    out: PathBuf,
    rows_per_token: Vec<f64>,
    mean_rows: Vec<f64>,
    budgets: usize,
    k_max: u32,
    d_in: u64,
    d_emb: Option<u64>,
    tied: bool,
    dtype: &str,
    paper_rows_per_token: f64,
    rows_plot_mean_rows: Option<f64>,
    fill: &str,
    progress: bool,
) -> PyResult<String> {
    let mut opts = PlanOptions::new(out);
    opts.rows_per_token = rows_per_token;
    opts.mean_rows = mean_rows;
    opts.budgets = budgets;
    opts.k_max = k_max;
    opts.shape = shape(Some(d_in), d_emb, tied, dtype)?.expect("d_in given");
    opts.paper_rows_per_token = paper_rows_per_token;
    opts.rows_plot_mean_rows = rows_plot_mean_rows;
    opts.fill = choice(fill, "fill")?;
    let mut inputs = vec![train_name.as_path()];
    if heldout.is_some() {
        inputs.push(heldout_name.as_path());
    }
    let train = &train.profile;
    let heldout = heldout.as_ref().map(|h| &h.profile);
    py.detach(|| {
        check_output(&opts.out, &inputs, OutputKind::Folder, "out")?;
        sweep::plan(
            train,
            &train_name,
            heldout.zip(Some(heldout_name.as_path())),
            &opts,
            &ui(progress),
        )
    })
    .py()
    .and_then(|r| to_json(&r))
}

// ---- packed folders -----------------------------------------------------------------------

/// Keeps a layer's mapped shards alive for as long as an array viewing them exists.
#[pyclass(module = "l3kit._native")]
struct MappedRows {
    _store: Arc<PackedStore>,
}

#[pyclass(module = "l3kit._native")]
struct NativePacked {
    /// None once closed.
    open: Option<(Packed, Vec<Arc<PackedStore>>)>,
}

impl NativePacked {
    fn model(&self) -> PyResult<&(Packed, Vec<Arc<PackedStore>>)> {
        self.open
            .as_ref()
            .ok_or_else(|| bad("the packed model is closed"))
    }

    fn store(&self, layer: usize) -> PyResult<&Arc<PackedStore>> {
        let (model, stores) = self.model()?;
        stores.get(layer).ok_or_else(|| {
            bad(format!(
                "{}: the packed model has {} L3 layers, there is no layer {layer}",
                model.dir.display(),
                stores.len()
            ))
        })
    }
}

#[pymethods]
impl NativePacked {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let open = py
            .detach(|| l3kit::serve::packed::open_packed(&path))
            .py()?;
        Ok(NativePacked { open: Some(open) })
    }

    fn close(&mut self) {
        self.open = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        self.open.is_none()
    }

    /// `config.json` as read (the model's keys and the `l3` section).
    fn config_json(&self) -> PyResult<String> {
        to_json(&self.model()?.0.config_json)
    }

    fn dtype(&self) -> PyResult<&'static str> {
        Ok(self.model()?.0.config.dtype.name())
    }

    fn bounds<'py>(&self, py: Python<'py>, layer: usize) -> PyResult<Bound<'py, PyArray1<i64>>> {
        Ok(self.store(layer)?.bounds().to_vec().into_pyarray(py))
    }

    /// The packed bytes of `token`'s rows in `layer`, viewed where they are mapped.
    fn raw_rows<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        token: u32,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let store = self.store(layer)?.clone();
        let bytes = match store.token_bytes(token).py()? {
            std::borrow::Cow::Borrowed(b) => b,
            // Only a store that reads from the device copies; these stores are mapped.
            std::borrow::Cow::Owned(v) => return Ok(v.into_pyarray(py)),
        };
        let view = ArrayView1::from(bytes);
        let owner = Bound::new(
            py,
            MappedRows {
                _store: store.clone(),
            },
        )?;
        // SAFETY: the bytes lie in a read-only map owned by `store`; `owner` holds an Arc to
        // it, so the map lives at least as long as the array whose base `owner` becomes, and
        // a map is never moved or resized.
        Ok(unsafe { PyArray1::borrow_from_array(&view, owner.into_any()) })
    }

    /// `token`'s rows in `layer` as f32 (int8 dequantised), flat.
    fn rows_f32<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        token: u32,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let store = self.store(layer)?;
        let mut blocks = Blocks::default();
        store.gather_into(&[token], &mut blocks).py()?;
        Ok(blocks.rows.into_pyarray(py))
    }

    #[pyo3(signature = (progress=false))]
    fn check(&self, py: Python<'_>, progress: bool) -> PyResult<String> {
        let (model, _) = self.model()?;
        py.detach(|| l3kit::formats::packed::check_packed_folder(&model.dir, &ui(progress)))
            .into_result()
            .py()
            .and_then(|r| to_json(&r))
    }
}

/// One tensor as handed to Python: name, safetensors dtype name, shape, raw bytes.
type RawTensor<'py> = (String, String, Vec<usize>, Bound<'py, PyArray1<u8>>);

/// Every tensor of a checkpoint (safetensors, sharded, PyTorch).
#[pyfunction]
fn read_checkpoint<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Vec<RawTensor<'py>>> {
    let tensors = py
        .detach(|| {
            let ck = Checkpoint::open(&path)?;
            ck.tensors()
                .into_iter()
                .map(|t| {
                    let bytes = ck.read_all(&t.name)?;
                    Ok((
                        t.name.clone(),
                        format!("{:?}", t.dtype),
                        t.shape.clone(),
                        bytes,
                    ))
                })
                .collect::<l3kit::Result<Vec<_>>>()
        })
        .py()?;
    Ok(tensors
        .into_iter()
        .map(|(n, d, s, b)| (n, d, s, b.into_pyarray(py)))
        .collect())
}

fn size(value: &str, name: &str) -> PyResult<u64> {
    l3kit::util::units::parse_size(value).map_err(|e| bad(format!("{name}={value:?}: {e}")))
}

#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (source, out, dialect, map, allocation, dtype, other_dtype, max_shard_size,
    allow_nonfinite, force, progress))]
fn pack(
    py: Python<'_>,
    source: PathBuf,
    out: PathBuf,
    dialect: Option<&str>,
    map: Option<PathBuf>,
    allocation: Option<PathBuf>,
    dtype: Option<&str>,
    other_dtype: Option<&str>,
    max_shard_size: &str,
    allow_nonfinite: bool,
    force: bool,
    progress: bool,
) -> PyResult<String> {
    let other_dtype: Option<TableDtype> = opt_choice(other_dtype, "other_dtype")?;
    if other_dtype == Some(TableDtype::Int8) {
        return Err(bad(
            "other_dtype=\"int8\": int8 is a table format; the other tensors may be f32, bf16 or f16",
        ));
    }
    let opts = l3kit::pack::PackOptions {
        source,
        out,
        dialect: opt_choice(dialect, "dialect")?,
        map,
        allocation,
        dtype: opt_choice(dtype, "dtype")?,
        other_dtype,
        max_shard_size: size(max_shard_size, "max_shard_size")?,
        force,
        allow_nonfinite,
    };
    py.detach(|| l3kit::pack::pack(&opts, &ui(progress)))
        .py()
        .and_then(|s| to_json(&s))
}

#[pyfunction]
#[pyo3(signature = (packed, out, max_shard_size, force, check, progress))]
fn unpack(
    py: Python<'_>,
    packed: PathBuf,
    out: PathBuf,
    max_shard_size: &str,
    force: bool,
    check: bool,
    progress: bool,
) -> PyResult<String> {
    use l3kit::pack::unpack::{unpack_with, Hashes, UnpackOptions};
    let opts = UnpackOptions {
        dir: packed,
        out,
        force,
        max_shard_size: size(max_shard_size, "max_shard_size")?,
    };
    let hashes = if check { Hashes::Check } else { Hashes::Skip };
    py.detach(|| unpack_with(&opts, hashes, &ui(progress)))
        .py()
        .and_then(|s| to_json(&s))
}

#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (source, packed, dialect, map, allocation, inputs, profile, tokens, seed,
    device, tolerance, progress))]
fn verify(
    py: Python<'_>,
    source: PathBuf,
    packed: PathBuf,
    dialect: Option<&str>,
    map: Option<PathBuf>,
    allocation: Option<PathBuf>,
    inputs: Option<PathBuf>,
    profile: Option<PathBuf>,
    tokens: usize,
    seed: u64,
    device: String,
    tolerance: Option<f64>,
    progress: bool,
) -> PyResult<String> {
    let opts = l3kit::verify::VerifyOptions {
        source,
        packed,
        source_opts: l3kit::verify::SourceOptions {
            dialect: opt_choice(dialect, "dialect")?,
            map,
            allocation,
        },
        inputs,
        profile,
        tokens,
        seed,
        device,
        tolerance,
    };
    py.detach(|| l3kit::verify::verify(&opts, &ui(progress)).and_then(|r| r.into_result()))
        .py()
        .and_then(|r| to_json(&r))
}

/// A size such as `5GB`, `512KiB` or `1000`, parsed as the CLI parses it.
#[pyfunction]
fn parse_size(value: &str, name: &str) -> PyResult<u64> {
    size(value, name)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("L3kitError", py.get_type::<L3kitError>())?;
    m.add("BadInputError", py.get_type::<BadInputError>())?;
    m.add("CheckFailedError", py.get_type::<CheckFailedError>())?;
    m.add_class::<LzwScanner>()?;
    m.add_class::<NativeProfile>()?;
    m.add_class::<NativeAllocation>()?;
    m.add_class::<NativePacked>()?;
    m.add_class::<MappedRows>()?;
    m.add_function(wrap_pyfunction!(profile, m)?)?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(unpack, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    Ok(())
}
