//! The GEMM autotuner, in the manner of CubeCL's (cubecl-runtime `tune/`): a key names the
//! adapter, the kernel family and the shape class of a product; on the first product of a
//! key every candidate kernel ([`crate::gpu::gemm::candidates`]) is built and timed, and
//! the fastest is remembered, in memory and in a JSON file in the user's cache folder, so
//! that later runs on the same adapter skip the timing.
//!
//! `MICROUNIFY_AUTOTUNE` picks the mode: `off` (the static choice), `on` (the default: the
//! cached winner, tuning on a miss) or `refresh` (tune again and overwrite). The cache is
//! `$XDG_CACHE_HOME/microunify/autotune.json` (else the platform's cache folder, as
//! `dirs::cache_dir` finds it). A cache file that cannot be read or parsed, or that another
//! format wrote, is ignored with one warning and rewritten on the next tuning.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::gemm::{Gemm, Path, candidates};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

/// The environment variable that picks the mode.
pub const ENV: &str = "MICROUNIFY_AUTOTUNE";
/// The cache file's name inside `<cache folder>/microunify/`.
pub const FILE: &str = "autotune.json";
/// What the cache file says it is (a file without it is foreign, and ignored).
const FORMAT: &str = "microunify-autotune";
/// Bumped when keys or variant names change meaning: older files are then ignored.
const VERSION: u32 = 1;
/// The largest cache file read (a real one holds a few hundred short entries).
const MAX_CACHE_BYTES: u64 = 4 << 20;
/// Products per timed submission are chosen so that one takes about this long.
const TARGET_MS: f64 = 2.0;
/// At most this many products per submission, and timed submissions per candidate.
const MAX_REPS: usize = 16;
const TIMED_RUNS: usize = 3;
/// A candidate whose warm-up product takes longer than this is timed by that one product
/// (it has lost against any reasonable kernel; timing it more only delays the run).
const SLOW_MS: f64 = 200.0;

/// How the autotuner behaves (`MICROUNIFY_AUTOTUNE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// The static choice, no timing, no cache.
    Off,
    /// The cached winner; tune on a miss.
    On,
    /// Tune every key again and overwrite the cache.
    Refresh,
}

/// A mode set by the program itself ([`force_mode`]), over the environment's: 0 none.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Makes every later choice use `mode` whatever `MICROUNIFY_AUTOTUNE` says (test binaries
/// set [`Mode::Off`] so that their kernels do not depend on what a cache holds; setting
/// the variable from a running multi-threaded program is unsound).
pub fn force_mode(mode: Mode) {
    FORCED.store(mode as u8 + 1, Ordering::Relaxed);
}

impl Mode {
    /// The mode in force: [`force_mode`]'s, else what `MICROUNIFY_AUTOTUNE` asks for
    /// (unset or empty: [`Mode::On`]).
    pub fn from_env() -> Result<Self> {
        match FORCED.load(Ordering::Relaxed) {
            1 => return Ok(Mode::Off),
            2 => return Ok(Mode::On),
            3 => return Ok(Mode::Refresh),
            _ => {}
        }
        let value = std::env::var(ENV).unwrap_or_default();
        match value.as_str() {
            "" | "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            "refresh" => Ok(Mode::Refresh),
            _ => Err(Error::Env {
                name: ENV,
                value,
                expected: "off, on or refresh",
            }),
        }
    }
}

/// The kernel family of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Dense,
    /// Micro-structured with blocks of `br × bc`.
    Micro {
        br: usize,
        bc: usize,
    },
}

/// `ceil(log2(v))`: the shape class of one dimension (1 → 0, 2 → 1, 3..4 → 2, 5..8 → 3).
pub fn log2_bucket(v: usize) -> u32 {
    usize::BITS - v.saturating_sub(1).leading_zeros()
}

/// The cache key of a product: adapter (name, driver, backend), family and shape class.
pub fn key(info: &wgpu::AdapterInfo, family: Family, m: usize, k: usize, n: usize) -> String {
    let family = match family {
        Family::Dense => "dense".to_string(),
        Family::Micro { br, bc } => format!("micro-{br}x{bc}"),
    };
    format!(
        "{} | {} {} | {:?} | {family} | m2^{} k2^{} n2^{}",
        info.name,
        info.driver,
        info.driver_info,
        info.backend,
        log2_bucket(m),
        log2_bucket(k),
        log2_bucket(n)
    )
}

/// The cache file: `$XDG_CACHE_HOME`, else the platform's cache folder, then
/// `microunify/autotune.json`; `None` where there is no home to put it in.
pub fn cache_path() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    // XDG_CACHE_HOME first on every platform (dirs honours it on Linux only), so a
    // test or a user can point the cache anywhere.
    let base = var("XDG_CACHE_HOME").or_else(dirs::cache_dir)?;
    Some(base.join("microunify").join(FILE))
}

/// The winners of one cache file, by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cache {
    pub winners: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheFile {
    format: String,
    version: u32,
    winners: BTreeMap<String, String>,
}

impl Cache {
    /// The cache in `path`: empty where there is no file; `Err` (with the reason, for the
    /// one warning) where the file cannot be read or is not a cache of this version.
    pub fn load(path: &std::path::Path) -> std::result::Result<Self, String> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let bytes = crate::fsio::read_regular(path, MAX_CACHE_BYTES, "autotune cache")
            .map_err(|e| e.to_string())?;
        let file: CacheFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not an autotune cache: {e}", path.display()))?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(format!(
                "{}: format {:?} version {}, not {FORMAT:?} version {VERSION}",
                path.display(),
                file.format,
                file.version
            ));
        }
        Ok(Self {
            winners: file.winners,
        })
    }

    /// Writes the cache to `path` atomically, creating its folder.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let dir = crate::fsio::parent_dir(path);
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            reason: e,
        })?;
        let file = CacheFile {
            format: FORMAT.into(),
            version: VERSION,
            winners: self.winners.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.into(),
        })?;
        crate::fsio::write_atomic(path, text.as_bytes())
    }
}

/// The process's view of the cache file: loaded once per path, warned about once; the
/// keys tuned in this process (which `refresh` does not tune twice).
struct State {
    loaded: Option<(PathBuf, Cache)>,
    warned: Vec<PathBuf>,
    tuned: Vec<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    loaded: None,
    warned: Vec::new(),
    tuned: Vec::new(),
});

impl State {
    /// The cache of `path`, loading it on first use (a bad file: one warning, then empty).
    fn cache(&mut self, path: &std::path::Path) -> &mut Cache {
        if self.loaded.as_ref().is_none_or(|(p, _)| p != path) {
            let cache = Cache::load(path).unwrap_or_else(|why| {
                if !self.warned.iter().any(|p| p == path) {
                    self.warned.push(path.to_path_buf());
                    crate::errln!("warning: ignoring the GEMM autotune cache: {why}");
                }
                Cache::default()
            });
            self.loaded = Some((path.to_path_buf(), cache));
        }
        &mut self.loaded.as_mut().expect("loaded above").1
    }
}

/// Median milliseconds per product of `g` (a warm-up product first, then a few timed
/// submissions of enough products to take about [`TARGET_MS`]; GPU time as seen by
/// submit and wait).
pub fn time_product(gpu: &Gpu, g: &Gemm) -> Result<f64> {
    let timed = |reps: usize| -> Result<f64> {
        let start = Instant::now();
        g.run_times(gpu, reps)?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / reps as f64)
    };
    let first = timed(1)?;
    if first > SLOW_MS {
        return Ok(first);
    }
    let reps = ((TARGET_MS / first.max(1e-3)).ceil() as usize).clamp(1, MAX_REPS);
    let mut runs = (0..TIMED_RUNS)
        .map(|_| timed(reps))
        .collect::<Result<Vec<_>>>()?;
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

/// Times every candidate that builds (`build` makes the GEMM of a path) on a fixed X and
/// returns the fastest with every candidate's time; `Err` when none builds.
pub fn tune(
    gpu: &Gpu,
    paths: &[Path],
    build: impl Fn(Path) -> Result<Gemm>,
) -> Result<(Path, Vec<(Path, f64)>)> {
    let mut times = Vec::new();
    let mut first_error = None;
    for &path in paths {
        let measured = build(path).and_then(|g| {
            let x: Vec<f32> = (0..g.k * g.n)
                .map(|i| (i as f32 * 0.618_034).fract() - 0.5)
                .collect();
            g.write_x(gpu, &x)?;
            time_product(gpu, &g)
        });
        match measured {
            Ok(ms) => times.push((path, ms)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let best = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|t| t.0);
    match (best, first_error) {
        (Some(best), _) => Ok((best, times)),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::Shape {
            layer: "<gemm>".into(),
            why: "no GEMM kernel takes this product".into(),
        }),
    }
}

/// The path [`Path::Auto`] takes for a product: [`Path::Auto`] itself (the static choice)
/// when the autotuner is off; else the cached winner of its key, or the winner of a
/// tuning run (cached on disk where there is a cache folder).
pub fn choose(
    gpu: &Gpu,
    family: Family,
    m: usize,
    k: usize,
    n: usize,
    build: impl Fn(Path) -> Result<Gemm>,
) -> Result<Path> {
    let mode = Mode::from_env()?;
    if mode == Mode::Off {
        return Ok(Path::Auto);
    }
    let micro_bc = match family {
        Family::Dense => None,
        Family::Micro { bc, .. } => Some(bc),
    };
    let paths = candidates(n, micro_bc);
    let key = key(&gpu.info, family, m, k, n);
    let file = cache_path();
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = state.tuned.contains(&key);
    let memory = PathBuf::new();
    let cache = state.cache(file.as_deref().unwrap_or(&memory));
    if (mode == Mode::On || fresh)
        && let Some(name) = cache.winners.get(&key)
        && let Some(&p) = paths.iter().find(|p| p.name() == *name)
    {
        return Ok(p);
    }
    let (best, _) = tune(gpu, &paths, build)?;
    cache.winners.insert(key.clone(), best.name());
    if let Some(file) = &file
        && let Err(e) = cache.save(file)
    {
        // The winner still holds for this process.
        crate::errln!("warning: not saving the GEMM autotune cache: {e}");
    }
    state.tuned.push(key);
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, backend: wgpu::Backend) -> wgpu::AdapterInfo {
        let mut i = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, backend);
        i.name = name.into();
        i.driver = "drv".into();
        i.driver_info = "1.0".into();
        i
    }

    #[test]
    fn buckets_are_ceil_log2() {
        let got: Vec<u32> = [1, 2, 3, 4, 5, 8, 9, 1024, 1025]
            .iter()
            .map(|&v| log2_bucket(v))
            .collect();
        assert_eq!(got, [0, 1, 2, 2, 3, 3, 4, 10, 11]);
    }

    #[test]
    fn keys_separate_adapters_backends_families_and_shape_classes() {
        let a = info("A", wgpu::Backend::Vulkan);
        let base = key(&a, Family::Dense, 1000, 1000, 256);
        assert_eq!(base, key(&a, Family::Dense, 1024, 513, 129));
        for other in [
            key(
                &info("B", wgpu::Backend::Vulkan),
                Family::Dense,
                1000,
                1000,
                256,
            ),
            key(
                &info("A", wgpu::Backend::Gl),
                Family::Dense,
                1000,
                1000,
                256,
            ),
            key(&a, Family::Micro { br: 4, bc: 4 }, 1000, 1000, 256),
            key(&a, Family::Dense, 2000, 1000, 256),
            key(&a, Family::Dense, 1000, 2000, 256),
            key(&a, Family::Dense, 1000, 1000, 257),
        ] {
            assert_ne!(base, other);
        }
        assert_ne!(
            key(&a, Family::Micro { br: 4, bc: 8 }, 64, 64, 8),
            key(&a, Family::Micro { br: 8, bc: 4 }, 64, 64, 8)
        );
    }

    #[test]
    fn the_cache_round_trips_and_a_bad_file_is_refused_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE);
        assert_eq!(Cache::load(&path).unwrap(), Cache::default());
        let mut c = Cache::default();
        c.winners.insert("k1".into(), "tiled".into());
        c.winners.insert("k2".into(), "workgroup-64x64/8x8".into());
        c.save(&path).unwrap();
        assert_eq!(Cache::load(&path).unwrap(), c);
        for (bad, why) in [
            (&b"{not json"[..], "not an autotune cache"),
            (
                br#"{"format":"other","version":1,"winners":{}}"#,
                "\"other\"",
            ),
            (
                br#"{"format":"microunify-autotune","version":99,"winners":{}}"#,
                "version 99",
            ),
            (&[0xff, 0xfe, 0x00][..], "not an autotune cache"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = Cache::load(&path).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        // A folder where the file should be is refused too.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(Cache::load(&path).is_err());
    }

    #[test]
    fn a_bad_file_warns_once_and_leaves_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, "garbage").unwrap();
        let mut state = State {
            loaded: None,
            warned: Vec::new(),
            tuned: Vec::new(),
        };
        assert!(state.cache(&path).winners.is_empty());
        state
            .cache(&path)
            .winners
            .insert("k".into(), "tiled".into());
        assert_eq!(state.warned, vec![path.clone()]);
        // Loaded once: the entry made in memory stays.
        assert_eq!(state.cache(&path).winners.len(), 1);
    }

    #[test]
    fn the_cache_folder_follows_xdg_cache_home() {
        // Read-only use of the environment: whatever it is, the file ends in our name.
        if let Some(p) = cache_path() {
            assert!(p.ends_with("microunify/autotune.json"), "{}", p.display());
        }
    }
}
