//! PyTorch checkpoints (`torch.save` zip files), read exactly or refused.
//!
//! The zip's `data.pkl` is interpreted by l3kit's own pickle reader ([`super::pickle`]), which
//! runs no code, never recurses and checks every length against the bytes present. Every
//! tensor record in the state dict is then validated before it is listed: its storage type
//! must be one l3kit reads, its shape, stride and storage offset non-negative and consistent
//! with its storage, and the storage's byte size equal to its zip entry's. A tensor that fails
//! any of these is an error naming it, never skipped: a checkpoint missing a tensor would pack
//! into a model missing a layer.
//!
//! The storage location recorded with each tensor (`cpu`, `cuda:0`, ...) does not matter: the
//! bytes are read from the file. Row-major tensors are read with positioned reads straight
//! from their zip entry (`torch.save` stores entries uncompressed); other strided views
//! (a transposed weight, say) are gathered into row-major order when first read, and the most
//! recent one is cached.

use super::archive::{Archive, ZipEntry};
use super::pickle::{self, Obj, Pickle, Val};
use super::{lock, Checkpoint, Entry, Loc};
use crate::formats::safetensors::{checked_byte_len, TensorInfo};
use crate::util::error::{Error, IoContext, Result};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keys tried, in order, when a PyTorch file has no tensors at its top level.
pub const PT_NESTED_KEYS: [&str; 3] = ["state_dict", "model", "module"];

/// Largest `data.pkl` read (a state dict of several hundred thousand tensors fits).
pub const MAX_PICKLE_BYTES: u64 = 128 << 20;

/// An open PyTorch zip checkpoint.
pub(super) struct PtFile {
    pub(super) path: PathBuf,
    file: File,
    layouts: Vec<PtLayout>,
}

/// Where a tensor's elements sit in its storage's zip entry.
#[derive(Debug, Clone)]
struct PtLayout {
    /// Absolute file offset of the storage's first byte.
    storage_start: u64,
    /// Storage offset of the tensor's first element, in elements.
    offset: u64,
    shape: Vec<usize>,
    strides: Vec<usize>,
    elem: usize,
    row_major: bool,
}

/// A storage type's dtype (`torch.FloatStorage` -> F32), where l3kit reads it.
fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "ByteStorage" => Dtype::U8,
        "CharStorage" => Dtype::I8,
        "ShortStorage" => Dtype::I16,
        "IntStorage" => Dtype::I32,
        "LongStorage" => Dtype::I64,
        "BoolStorage" => Dtype::BOOL,
        "UInt16Storage" => Dtype::U16,
        "UInt32Storage" => Dtype::U32,
        "UInt64Storage" => Dtype::U64,
        "Float8_e4m3fnStorage" => Dtype::F8_E4M3,
        "Float8_e5m2Storage" => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// One tensor record of the pickle, before validation against the archive.
struct Record {
    storage_class: String,
    key: String,
    storage_numel: i128,
    offset: i128,
    shape: Vec<i128>,
    strides: Vec<i128>,
}

fn int_of(v: Val) -> Option<i128> {
    match v {
        Val::Int(i) => Some(i as i128),
        Val::Bool(b) => Some(b as i128),
        // Too large for any real size; reported as such.
        Val::BigInt => Some(i128::MAX),
        _ => None,
    }
}

/// Is `v` a tensor (a call of one of torch's `_rebuild_*` functions)?
fn rebuild_fn(p: &Pickle, v: Val) -> Option<(&str, &str, Val)> {
    let Some(Obj::Call { func, args }) = p.obj(v) else {
        return None;
    };
    let Some(Obj::Global { module, name }) = p.obj(*func) else {
        return None;
    };
    (matches!(module.as_str(), "torch._utils" | "torch._tensor" | "torch")
        && name.starts_with("_rebuild"))
    .then_some((module.as_str(), name.as_str(), *args))
}

/// The record of the tensor `v` (a `_rebuild_*` call), or why it cannot be read.
fn record(p: &Pickle, v: Val) -> std::result::Result<Record, String> {
    let (mut module, mut name, mut args) = rebuild_fn(p, v).expect("checked by the caller");
    // Parameters and tensor subclasses wrap the plain tensor record.
    for _ in 0..4 {
        let a = p
            .tuple(args)
            .ok_or_else(|| format!("{module}.{name} has {} as arguments", p.kind(args)))?;
        match name {
            "_rebuild_parameter" | "_rebuild_parameter_with_state" => {
                let inner = *a.first().ok_or("a parameter without its tensor")?;
                (module, name, args) = rebuild_fn(p, inner)
                    .ok_or_else(|| format!("a parameter wrapping {}", p.kind(inner)))?;
            }
            "_rebuild_from_type_v2" => {
                let (Some(&func), Some(&inner)) = (a.first(), a.get(2)) else {
                    return Err("_rebuild_from_type_v2 with too few arguments".into());
                };
                match p.obj(func) {
                    Some(Obj::Global { module: m, name: n }) => {
                        (module, name, args) = (m.as_str(), n.as_str(), inner);
                    }
                    _ => return Err(format!("_rebuild_from_type_v2 of {}", p.kind(func))),
                }
            }
            "_rebuild_tensor_v2" | "_rebuild_tensor" => {
                return plain_record(p, a);
            }
            other => {
                return Err(format!(
                    "is stored with {module}.{other} (a quantized, sparse, nested or other \
                     special tensor), which l3kit cannot read; save a plain dense tensor"
                ))
            }
        }
    }
    Err("tensor wrappers nested too deeply".into())
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn plain_record(p: &Pickle, a: &[Val]) -> std::result::Result<Record, String> {
    if a.len() < 4 {
        return Err(format!(
            "its _rebuild_tensor_v2 call has {} arguments, at least 4 are needed",
            a.len()
        ));
    }
    let storage = match p.obj(a[0]) {
        Some(Obj::PersId(id)) => *id,
        _ => {
            return Err(format!(
                "its storage is {}, not a storage reference",
                p.kind(a[0])
            ))
        }
    };
    let s = p
        .tuple(storage)
        .filter(|s| s.len() >= 5 && p.str(s[0]) == Some("storage"))
        .ok_or("its storage reference is not ('storage', type, key, location, size)")?;
    let storage_class = match p.obj(s[1]) {
        Some(Obj::Global { name, .. }) => name.clone(),
        _ => return Err(format!("its storage type is {}", p.kind(s[1]))),
    };
    let key = p
        .str(s[2])
        .ok_or_else(|| format!("its storage key is {}", p.kind(s[2])))?
        .to_string();
    let storage_numel =
        int_of(s[4]).ok_or_else(|| format!("its storage size is {}", p.kind(s[4])))?;
    let offset = int_of(a[1]).ok_or_else(|| format!("its storage offset is {}", p.kind(a[1])))?;
    let ints = |v: Val, what: &str| -> std::result::Result<Vec<i128>, String> {
        let t = p
            .tuple(v)
            .ok_or_else(|| format!("its {what} is {}, not a tuple", p.kind(v)))?;
        t.iter()
            .map(|&x| int_of(x).ok_or_else(|| format!("its {what} holds {}", p.kind(x))))
            .collect()
    };
    Ok(Record {
        storage_class,
        key,
        storage_numel,
        offset,
        shape: ints(a[2], "shape")?,
        strides: ints(a[3], "stride")?,
    })
}

/// The state dict: the top-level dict if it holds tensors, else the first of
/// [`PT_NESTED_KEYS`] that does.
fn state_dict<'p>(p: &'p Pickle, path: &Path) -> Result<&'p [(Val, Val)]> {
    let holds_tensors = |d: &[(Val, Val)]| d.iter().any(|(_, v)| rebuild_fn(p, *v).is_some());
    let top = p.dict(p.root).ok_or_else(|| {
        Error::in_file(
            path,
            format!(
                "data.pkl holds {}, not a dict of tensors (a state dict)",
                p.kind(p.root)
            ),
        )
    })?;
    if holds_tensors(top) {
        return Ok(top);
    }
    for key in PT_NESTED_KEYS {
        let found = top.iter().find(|(k, _)| p.str(*k) == Some(key));
        if let Some(d) = found.and_then(|(_, v)| p.dict(*v)) {
            if holds_tensors(d) {
                return Ok(d);
            }
        }
    }
    Err(Error::in_file(
        path,
        format!(
            "no tensors found in the PyTorch checkpoint (looked at the top level and under {})",
            PT_NESTED_KEYS.map(|k| format!("\"{k}\"")).join(", ")
        ),
    ))
}

/// Validate a record against the archive: the layout it describes must lie inside its
/// storage, and the storage must be exactly its entry's bytes.
fn layout(
    r: &Record,
    entry: &ZipEntry,
    dtype: Dtype,
) -> std::result::Result<(Vec<usize>, PtLayout), String> {
    let elem = dtype.bitsize() / 8;
    let to_usize = |v: i128, what: &str| -> std::result::Result<usize, String> {
        if v < 0 {
            Err(format!("{what}: {v} is negative"))
        } else {
            usize::try_from(v).map_err(|_| format!("{what}: {v} is too large"))
        }
    };
    if r.shape.len() != r.strides.len() {
        return Err(format!(
            "shape {:?} and stride {:?} have different lengths",
            r.shape, r.strides
        ));
    }
    let mut shape = Vec::with_capacity(r.shape.len());
    for &d in &r.shape {
        shape.push(to_usize(d, &format!("shape {:?}", r.shape))?);
    }
    let mut strides = Vec::with_capacity(r.strides.len());
    for &s in &r.strides {
        strides.push(to_usize(s, &format!("stride {:?}", r.strides))?);
    }
    let offset = to_usize(r.offset, "storage offset")?;
    let storage_numel = to_usize(r.storage_numel, "storage size")?;
    let byte_len =
        checked_byte_len(dtype, &shape).ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let numel = byte_len / elem;
    let storage_bytes = storage_numel
        .checked_mul(elem)
        .ok_or_else(|| format!("storage size {storage_numel} is too large"))?;
    if storage_bytes as u64 != entry.size {
        return Err(format!(
            "its storage {} claims {storage_numel} elements ({storage_bytes} bytes), but the \
             archive's entry holds {} bytes: the file is corrupt",
            entry.name, entry.size
        ));
    }
    if entry.method != 0 {
        return Err(format!(
            "its storage {} is compressed in the zip (method {}); torch.save never compresses, \
             so re-save the file with torch.save or convert it to safetensors",
            entry.name, entry.method
        ));
    }
    if numel > 0 {
        // The last element's index: every term is checked, so a huge stride or offset cannot
        // wrap around into the storage.
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(&strides) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| {
                    format!("storage offset {offset} with shape {shape:?} and stride {strides:?} overflows")
                })?;
        }
        if last >= storage_numel {
            return Err(format!(
                "shape {shape:?} with stride {strides:?} at storage offset {offset} needs \
                 element {last} of its storage, which holds {storage_numel} elements"
            ));
        }
        if numel > storage_numel {
            return Err(format!(
                "shape {shape:?} has {numel} elements but its storage only {storage_numel} (a \
                 broadcast view); save a .contiguous() copy"
            ));
        }
    }
    let mut row_major = true;
    let mut want = 1usize;
    for (&d, &s) in shape.iter().zip(&strides).rev() {
        if d != 1 && s != want {
            row_major = false;
        }
        want = want.saturating_mul(d);
    }
    Ok((
        shape.clone(),
        PtLayout {
            storage_start: entry.data_start,
            offset: offset as u64,
            shape,
            strides,
            elem,
            row_major,
        },
    ))
}

impl Checkpoint {
    pub(super) fn open_pt(&mut self, path: &Path, file: File) -> Result<Vec<(String, Entry)>> {
        let file_len = file.metadata().with_path(path)?.len();
        let unreadable =
            |m: String| Error::in_file(path, format!("cannot read the PyTorch checkpoint: {m}"));
        let archive = Archive::read(&file, file_len).map_err(unreadable)?;
        let pkls: Vec<&ZipEntry> = archive
            .entries
            .iter()
            .filter(|e| {
                e.name == "data.pkl"
                    || e.name
                        .strip_suffix("/data.pkl")
                        .is_some_and(|d| !d.contains('/'))
            })
            .collect();
        let pkl = match pkls.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::in_file(
                    path,
                    "a zip file without data.pkl: not a torch.save checkpoint",
                ))
            }
            many => {
                return Err(Error::in_file(
                    path,
                    format!(
                        "the zip holds several pickles ({}); a torch.save file has one",
                        many.iter()
                            .map(|e| e.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        };
        let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
        if archive.get(&format!("{prefix}constants.pkl")).is_some() {
            return Err(Error::in_file(
                path,
                "a TorchScript archive (torch.jit.save), not a state dict: load it in PyTorch \
                 and save model.state_dict() with torch.save",
            ));
        }
        if let Some(e) = archive.get(&format!("{prefix}byteorder")) {
            let order = archive.read_small(&file, e, 64).map_err(unreadable)?;
            if order != b"little" {
                return Err(Error::in_file(
                    path,
                    format!(
                        "tensors are stored {:?}-endian; l3kit reads little-endian checkpoints \
                         only",
                        String::from_utf8_lossy(&order)
                    ),
                ));
            }
        }
        let bytes = archive
            .read_small(&file, pkl, MAX_PICKLE_BYTES)
            .map_err(unreadable)?;
        let p = pickle::parse(&bytes)
            .map_err(|m| Error::in_file(path, format!("{}: {m}", pkl.name)))?;
        drop(bytes);
        let dict = state_dict(&p, path)?;

        let mut out = Vec::new();
        let mut layouts = Vec::new();
        let mut seen: HashMap<&str, ()> = HashMap::new();
        // Storage key -> (storage type, size): every record sharing a storage must agree.
        let mut storages: BTreeMap<String, (String, i128)> = BTreeMap::new();
        let idx = self.pt.len();
        for &(k, v) in dict {
            if rebuild_fn(&p, v).is_none() {
                // Not a tensor (a step count, a nested config): nothing to read.
                continue;
            }
            let name = p.str(k).ok_or_else(|| {
                Error::in_file(
                    path,
                    format!(
                        "data.pkl holds a tensor under {} instead of a name",
                        p.kind(k)
                    ),
                )
            })?;
            let bad = |msg: String| Error::in_file(path, format!("tensor {name}: {msg}"));
            if seen.insert(name, ()).is_some() {
                return Err(bad("appears twice in data.pkl".into()));
            }
            let r = record(&p, v).map_err(bad)?;
            let dtype = storage_dtype(&r.storage_class).ok_or_else(|| {
                bad(format!(
                    "its storage type torch.{} is not one l3kit reads (floats, integers and bool \
                     are; quantized and complex tensors are not)",
                    r.storage_class
                ))
            })?;
            match storages.get(&r.key) {
                Some((class, n)) if *class != r.storage_class || *n != r.storage_numel => {
                    return Err(bad(format!(
                        "its storage {} is recorded as torch.{} of {} elements here and as \
                         torch.{class} of {n} elements elsewhere",
                        r.key, r.storage_class, r.storage_numel
                    )))
                }
                Some(_) => {}
                None => {
                    storages.insert(r.key.clone(), (r.storage_class.clone(), r.storage_numel));
                }
            }
            let entry_name = format!("{prefix}data/{}", r.key);
            let entry = archive.get(&entry_name).ok_or_else(|| {
                bad(format!(
                    "its storage {entry_name} is missing from the archive"
                ))
            })?;
            let (shape, lay) = layout(&r, entry, dtype).map_err(bad)?;
            out.push((
                name.to_string(),
                Entry {
                    info: TensorInfo {
                        name: name.to_string(),
                        dtype,
                        shape,
                        file: path.to_path_buf(),
                    },
                    loc: Loc::Pt {
                        file: idx,
                        layout: layouts.len(),
                    },
                },
            ));
            layouts.push(lay);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        self.pt.push(PtFile {
            path: path.to_path_buf(),
            file,
            layouts,
        });
        self.files.push(path.to_path_buf());
        Ok(out)
    }

    /// Fill `out` with bytes `[start, start + out.len())` of a PyTorch tensor's row-major data
    /// (the range was checked against the tensor's size).
    pub(super) fn read_pt(&self, e: &Entry, start: usize, out: &mut [u8]) -> Result<()> {
        let Loc::Pt { file, layout } = e.loc else {
            unreachable!("read_pt on a PyTorch entry")
        };
        let f = &self.pt[file];
        let l = &f.layouts[layout];
        if l.row_major {
            // Offsets fit: the layout was checked to lie inside the storage entry.
            let at = l.storage_start + l.offset * l.elem as u64 + start as u64;
            return f.file.read_exact_at(out, at).map_err(|err| {
                Error::in_file(
                    &f.path,
                    format!(
                        "tensor {}: reading {} bytes at byte {at} failed: {err} (was the file \
                         truncated or changed after it was opened?)",
                        e.info.name,
                        out.len()
                    ),
                )
            });
        }
        let bytes = self.pt_gathered(e, f, l)?;
        out.copy_from_slice(&bytes[start..start + out.len()]);
        Ok(())
    }

    /// A strided tensor gathered into row-major order, from the cache or built now.
    fn pt_gathered(&self, e: &Entry, f: &PtFile, l: &PtLayout) -> Result<Arc<Vec<u8>>> {
        let mut cache = lock(&self.cache);
        if let Some((n, bytes)) = cache.as_ref() {
            if *n == e.info.name {
                return Ok(bytes.clone());
            }
        }
        // Free the previous tensor before building the next one.
        *cache = None;
        let numel = e.info.numel();
        let mut out = vec![0u8; e.info.byte_len()];
        if numel > 0 {
            // The span of storage the view touches (checked to lie inside the storage, and no
            // larger than it).
            let mut last = l.offset as usize;
            for (&d, &s) in l.shape.iter().zip(&l.strides) {
                last += (d - 1) * s;
            }
            let first = l.offset as usize;
            let mut span = vec![0u8; (last - first + 1) * l.elem];
            let at = l.storage_start + (first * l.elem) as u64;
            f.file.read_exact_at(&mut span, at).map_err(|err| {
                Error::in_file(
                    &f.path,
                    format!("tensor {}: reading its storage failed: {err}", e.info.name),
                )
            })?;
            let rank = l.shape.len();
            let mut index = vec![0usize; rank];
            let mut src = 0usize;
            for dst in out.chunks_exact_mut(l.elem) {
                dst.copy_from_slice(&span[src * l.elem..(src + 1) * l.elem]);
                // Advance the row-major index like an odometer, moving `src` by the strides.
                for k in (0..rank).rev() {
                    index[k] += 1;
                    src += l.strides[k];
                    if index[k] < l.shape[k] {
                        break;
                    }
                    src -= l.strides[k] * index[k];
                    index[k] = 0;
                }
            }
        }
        let bytes = Arc::new(out);
        *cache = Some((e.info.name.clone(), bytes.clone()));
        Ok(bytes)
    }
}
