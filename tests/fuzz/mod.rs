//! The fuzz targets: one function per reader of user files, each taking arbitrary bytes,
//! putting them where the reader expects its file and reading them. A target passes an input
//! when the reader returns (Ok or a clean Err) without panicking, aborting or allocating past
//! the process's memory limit; readers that succeed are exercised further (every tensor of a
//! checkpoint read back), so an accepted input is also one the consumers can use.
//!
//! `tests/fuzz_smoke.rs` runs them over the committed seeds (`fuzz/corpus/TARGET/`) and a
//! bounded number of mutations of each; `docs/fuzzing.md` says how to run them for long.
#![allow(dead_code)]

use l3kit::checkpoint::{Checkpoint, MapFile};
use l3kit::formats::allocation::Allocation;
use l3kit::formats::packed::PackedModel;
use l3kit::formats::safetensors::OpenSafetensors;
use l3kit::profile::Profile;
use l3kit::util::progress::Ui;
use l3kit::verify::Inputs;
use std::path::{Path, PathBuf};

/// A fuzz target: its name (the corpus folder) and the function that feeds one input.
pub struct Target {
    pub name: &'static str,
    /// Returns whether the reader accepted the input.
    pub feed: fn(&Scratch, &[u8]) -> bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        feed: safetensors,
    },
    Target {
        name: "profile",
        feed: profile,
    },
    Target {
        name: "allocation",
        feed: allocation,
    },
    Target {
        name: "sharded_index",
        feed: sharded_index,
    },
    Target {
        name: "pytorch",
        feed: pytorch,
    },
    Target {
        name: "packed_config",
        feed: packed_config,
    },
    Target {
        name: "map",
        feed: map,
    },
    Target {
        name: "forward_inputs",
        feed: forward_inputs,
    },
    Target {
        name: "moe_map",
        feed: moe_map,
    },
    Target {
        name: "controller_state",
        feed: controller_state,
    },
];

/// A private folder a target writes its input into, with the fixed files some targets need
/// beside the fuzzed one (a shard for the index, a pristine packed folder).
pub struct Scratch {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// A packed folder whose `config.json` the `packed_config` target replaces.
    pub packed: PathBuf,
    /// A folder with a shard `model-00001-of-00001.safetensors` holding `a` and `b`, whose
    /// index the `sharded_index` target replaces.
    pub sharded: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        use l3kit::util::safetensors_file::{self as st, TensorBytes};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let source = dir.join("source");
        l3kit::synth::small(
            &source,
            l3kit::checkpoint::Dialect::Paper,
            l3kit::formats::dtype::TableDtype::F32,
        )
        .unwrap();
        let packed = dir.join("packed");
        let mut o = l3kit::pack::PackOptions::new(source, packed.clone());
        o.allocation = Some(dir.join("source/allocation.safetensors"));
        l3kit::pack::pack(&o, &Ui::quiet()).unwrap();
        let sharded = dir.join("sharded");
        std::fs::create_dir(&sharded).unwrap();
        let data = [1u8; 16];
        let tensors = [
            TensorBytes {
                name: "a".into(),
                dtype: safetensors::Dtype::F32,
                shape: vec![2, 2],
                data: std::borrow::Cow::Borrowed(&data[..]),
            },
            TensorBytes {
                name: "b".into(),
                dtype: safetensors::Dtype::U8,
                shape: vec![4],
                data: std::borrow::Cow::Borrowed(&data[..4]),
            },
        ];
        st::write_file(
            &sharded.join("model-00001-of-00001.safetensors"),
            &tensors,
            &Default::default(),
            8,
        )
        .unwrap();
        Scratch {
            _tmp: tmp,
            dir,
            packed,
            sharded,
        }
    }

    fn put(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// Read back every tensor of an accepted checkpoint (small ones whole, large ones in part),
/// so an accepted header is one whose offsets really hold.
fn read_tensors(c: &Checkpoint) {
    for t in c.tensors() {
        let name = t.name.clone();
        let len = c.get(&name).map(|t| t.byte_len()).unwrap_or(0);
        if len <= 1 << 20 {
            let _ = c.read_all(&name);
        } else {
            let mut buf = vec![0u8; 4096];
            let _ = c.read_into(&name, 0, &mut buf);
        }
    }
}

pub fn safetensors(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz.safetensors", data);
    let _ = OpenSafetensors::open(&p);
    let Ok(c) = Checkpoint::open(&p) else {
        return false;
    };
    read_tensors(&c);
    let _ = l3kit::checkpoint::detect_source(&c, None, None, None);
    true
}

pub fn profile(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-profile.safetensors", data);
    Profile::read(&p).is_ok()
}

pub fn allocation(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-allocation.safetensors", data);
    Allocation::read(&p).is_ok()
}

pub fn sharded_index(s: &Scratch, data: &[u8]) -> bool {
    let p = s.sharded.join("model.safetensors.index.json");
    std::fs::write(&p, data).unwrap();
    let Ok(c) = Checkpoint::open(&s.sharded) else {
        return false;
    };
    read_tensors(&c);
    true
}

pub fn pytorch(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz.pt", data);
    let Ok(c) = Checkpoint::open(&p) else {
        return false;
    };
    read_tensors(&c);
    true
}

pub fn packed_config(s: &Scratch, data: &[u8]) -> bool {
    let p = s.packed.join("config.json");
    std::fs::write(&p, data).unwrap();
    if PackedModel::open(&s.packed).is_err() {
        return false;
    }
    let _ = l3kit::formats::packed::check_packed_folder(&s.packed, &Ui::quiet());
    l3kit::serve::open_packed(&s.packed).is_ok()
}

pub fn map(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-map.toml", data);
    if MapFile::read(&p).is_err() {
        return false;
    }
    // A map that parses is then applied to a real checkpoint.
    let c = Checkpoint::open(&s.dir.join("source/model.safetensors")).unwrap();
    let _ = l3kit::checkpoint::detect_source(&c, None, Some(&p), None);
    true
}

pub fn forward_inputs(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-inputs.safetensors", data);
    Inputs::read(&p).is_ok()
}

pub fn moe_map(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-moe-map.toml", data);
    if l3kit::checkpoint::moe::MoeMapFile::read(&p).is_err() {
        return false;
    }
    // A map that parses is then applied to a real MoE checkpoint, and its layers loaded.
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/moe-olmoe.safetensors");
    let c = Checkpoint::open(&golden).unwrap();
    if let Ok(d) = l3kit::checkpoint::moe::detect_moe(&c, Some(&p)) {
        for t in &d.layers {
            let _ = l3kit::model::moe::MoeLayer::load(&c, t, &candle_core::Device::Cpu);
        }
    }
    true
}

pub fn controller_state(s: &Scratch, data: &[u8]) -> bool {
    let p = s.put("fuzz-controller.json", data);
    match l3kit::model::moe::ControllerFile::read(&p) {
        Ok(mut f) => {
            // An accepted state runs: p stays in its clamp whatever the feed.
            let check = |c: &mut l3kit::model::moe::PiController| {
                for a in [0.0, 1.0, f64::NAN, 1e9] {
                    let u = c.update(a);
                    assert!(u.p >= c.settings.p_min && u.p <= c.settings.p_max);
                }
            };
            match &mut f {
                l3kit::model::moe::ControllerFile::Global(c) => check(c),
                l3kit::model::moe::ControllerFile::PerLayer(m) => m.values_mut().for_each(check),
            }
            true
        }
        Err(_) => false,
    }
}

/// The committed seeds of `target`.
pub fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// One random mutation of `input`: byte flips, interesting values, insertions, deletions,
/// splices of another seed, and, in text, numbers swapped for extreme ones.
pub fn mutate(rng: &mut impl rand::Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const NUMBERS: &[&str] = &[
        "0",
        "-1",
        "1",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
        "1e309",
        "-1e309",
        "NaN",
        "nan",
        "1099511627776",
        "2147483648",
        "0.5",
        "null",
        "\"\"",
        "[]",
        "{}",
    ];
    let mut v = input.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'9'][rng.random_range(0..8)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                v.drain(i..i + n);
            }
            4 if len > 0 => v.truncate(rng.random_range(0..len)),
            5 if !other.is_empty() && len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - j).min(256));
                v.splice(i..i, other[j..j + n].iter().copied());
            }
            6 | 7 => {
                // A run of ASCII digits replaced by an extreme number.
                let digits: Vec<usize> = (0..len).filter(|&i| v[i].is_ascii_digit()).collect();
                if let Some(&start) = digits.get(rng.random_range(0..digits.len().max(1))) {
                    let mut end = start;
                    while end < len && (v[end].is_ascii_digit() || v[end] == b'.') {
                        end += 1;
                    }
                    let n = NUMBERS[rng.random_range(0..NUMBERS.len())];
                    v.splice(start..end, n.bytes());
                }
            }
            8 if len >= 8 => {
                // A little-endian u64 (a safetensors header length, a size) set to an extreme.
                let i = rng.random_range(0..=len - 8);
                let x: u64 =
                    [0, 1, u64::MAX, 1 << 32, 1 << 40, len as u64 + 1][rng.random_range(0..6)];
                v[i..i + 8].copy_from_slice(&x.to_le_bytes());
            }
            _ => {}
        }
    }
    v
}
