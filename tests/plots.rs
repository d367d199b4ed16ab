//! The PNG plots of `microunify::plots`: each writes a decodable PNG of the documented
//! size with something drawn on it, empty input still gives a plot, and bad input or an
//! unwritable path gives an error that names the layer or the path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use microunify::plots::{
    EpochPoint, LayerStates, RoundPoint, SensitivityCurve, SweepPoint, accuracy_plot,
    block_states_plot, residuals_plot, sensitivity_plot, sweep_plot,
};

/// The block-state colours of src/plots.rs (dense, unified, pruned).
const DENSE: [u8; 3] = [31, 119, 180];
const UNIFIED: [u8; 3] = [255, 127, 14];
const PRUNED: [u8; 3] = [214, 214, 214];
const WHITE: [u8; 3] = [255, 255, 255];

/// A fresh folder per test, so parallel tests never share files. With
/// MICROUNIFY_PLOTS_KEEP=<dir> the plots go under that folder and stay, to look at them.
fn temp_dir(test: &str) -> PathBuf {
    let dir = match std::env::var_os("MICROUNIFY_PLOTS_KEEP") {
        Some(keep) => PathBuf::from(keep).join(test),
        None => {
            std::env::temp_dir().join(format!("microunify-plots-{}-{test}", std::process::id()))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn clean_up(dir: &Path) {
    if std::env::var_os("MICROUNIFY_PLOTS_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]])
    }

    fn count(&self, color: [u8; 3]) -> usize {
        self.pixels().filter(|p| *p == color).count()
    }

    fn non_white(&self) -> usize {
        self.pixels().filter(|p| *p != WHITE).count()
    }
}

/// Checks the file by hand (signature, IHDR) and then decodes it, so a broken encoder
/// and a broken header are told apart.
fn read_png(path: &Path) -> Image {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} lacks the PNG signature",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk must be IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(bytes[24], 8, "bit depth");
    assert_eq!(bytes[25], 2, "colour type RGB");

    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((info.width, info.height), (width, height));
    rgb.truncate(info.buffer_size());
    assert_eq!(rgb.len(), width as usize * height as usize * 3);
    Image { width, height, rgb }
}

/// No `.tmp` left behind by the atomic write.
fn assert_no_temp_files(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The most common colours, to check that a plot is mostly background but not only.
fn histogram(img: &Image) -> HashMap<[u8; 3], usize> {
    let mut h = HashMap::new();
    for p in img.pixels() {
        *h.entry(p).or_insert(0) += 1;
    }
    h
}

fn run_epochs() -> Vec<EpochPoint> {
    let mut v = Vec::new();
    let mut epoch = 1;
    for (phase, n, acc0) in [("dense", 4, 95.0), ("admm", 10, 97.0), ("retrain", 5, 98.0)] {
        for i in 0..n {
            v.push(EpochPoint {
                epoch,
                phase: phase.into(),
                loss: 0.5 / epoch as f64,
                // Every other ADMM epoch unevaluated: the line must bridge the gaps.
                test_accuracy: (phase != "admm" || i % 2 == 0).then_some(acc0 + 0.1 * i as f64),
            });
            epoch += 1;
        }
    }
    v
}

#[test]
fn accuracy_plot_draws_phases_line_and_marks() {
    let dir = temp_dir("accuracy");
    let path = dir.join("accuracy.png");
    let mut points = run_epochs();
    points.reverse(); // Order must not matter.
    let marks = vec![
        ("dense".to_string(), 99.1),
        ("hard projection".to_string(), 96.2),
    ];
    // A shorter run first: the full plot must replace it.
    accuracy_plot(&path, &points[..3], &[]).unwrap();
    let first = read_png(&path);
    accuracy_plot(&path, &points, &marks).unwrap();
    let img = read_png(&path);
    assert_ne!(
        first.rgb, img.rgb,
        "the second plot did not replace the first"
    );
    assert_eq!((img.width, img.height), (1200, 800));
    // Phase bands (src/plots.rs `phase_color`) and the accuracy line colour.
    assert!(img.count([214, 230, 245]) > 1000, "dense band");
    assert!(img.count([253, 224, 190]) > 1000, "admm band");
    assert!(img.count([212, 238, 206]) > 1000, "retrain band");
    assert!(img.count(DENSE) > 200, "accuracy line");
    assert!(img.count([214, 39, 40]) > 200, "loss line");
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn residuals_plot_draws_both_residuals_and_rho() {
    let dir = temp_dir("residuals");
    let path = dir.join("residuals.png");
    let rounds: Vec<RoundPoint> = (1..=12)
        .map(|k| RoundPoint {
            round: k,
            rho: 1e-3 * 1.5f64.powi(k as i32),
            primal: 0.5 / (k * k) as f64,
            // The first round has no previous Z: its dual residual is 0, off a log axis.
            dual: if k == 1 { 0.0 } else { 0.1 / k as f64 },
        })
        .collect();
    residuals_plot(&path, &rounds).unwrap();
    let img = read_png(&path);
    assert_eq!((img.width, img.height), (1200, 700));
    assert!(img.count([214, 39, 40]) > 200, "primal line");
    assert!(img.count([31, 119, 180]) > 200, "dual line");
    assert!(img.count([90, 90, 90]) > 100, "rho line");
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn sweep_plot_one_colour_per_method() {
    let dir = temp_dir("sweep");
    let path = dir.join("sweep.png");
    let mut points = Vec::new();
    for (m, drop) in [("admm", 0.2), ("one-shot", 1.5), ("prune-only", 0.8)] {
        for r in [2.0, 4.0, 8.0, 16.0, 32.0] {
            points.push(SweepPoint {
                method: m.into(),
                compression_ratio: r,
                accuracy: 99.0 - drop * f64::log2(r),
            });
        }
    }
    sweep_plot(&path, &points, Some(99.1)).unwrap();
    let img = read_png(&path);
    assert_eq!((img.width, img.height), (1200, 800));
    // tab10 colours in order of first appearance.
    for c in [[31, 119, 180], [255, 127, 14], [44, 160, 44]] {
        assert!(img.count(c) > 200, "method colour {c:?}");
    }
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn sensitivity_plot_one_colour_per_layer_and_skips_what_cannot_be_drawn() {
    let dir = temp_dir("sensitivity");
    let curve = |layer: &str, scale: f64| SensitivityCurve {
        layer: layer.into(),
        points: [1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 40.0]
            .iter()
            .flat_map(|&r| [(r, scale * f64::ln(r)), (r, 2.0 * scale * f64::ln(r))])
            .collect(),
    };
    let path = dir.join("sensitivity.png");
    sensitivity_plot(
        &path,
        &[curve("fc1", 0.1), curve("fc2", 0.3), curve("fc3", 0.6)],
    )
    .unwrap();
    let img = read_png(&path);
    assert_eq!((img.width, img.height), (1200, 800));
    for c in [[31, 119, 180], [255, 127, 14], [44, 160, 44]] {
        assert!(img.count(c) > 200, "layer colour {c:?}");
    }
    let odd = SensitivityCurve {
        layer: "odd".into(),
        points: vec![
            (0.0, 1.0),
            (f64::NAN, 0.1),
            (3.0, f64::INFINITY),
            (2.0, -0.5),
        ],
    };
    for (name, curves) in [("empty", vec![]), ("odd", vec![odd])] {
        let path = dir.join(format!("{name}.png"));
        sensitivity_plot(&path, &curves).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(read_png(&path).non_white() > 500, "{name}");
    }
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn block_states_plot_shows_each_state_in_proportion() {
    let dir = temp_dir("blocks");
    let path = dir.join("blocks.png");
    // 10×20 grid: rows 0-4 dense, rows 5-7 unified, rows 8-9 pruned.
    let states: Vec<u8> = (0..10)
        .flat_map(|r| {
            std::iter::repeat_n(
                if r < 5 {
                    0
                } else if r < 8 {
                    1
                } else {
                    2
                },
                20,
            )
        })
        .collect();
    let small = LayerStates {
        name: "conv1".into(),
        grid_rows: 2,
        grid_cols: 3,
        states: vec![0, 1, 2, 2, 1, 0],
    };
    let layers = vec![
        LayerStates {
            name: "fc".into(),
            grid_rows: 10,
            grid_cols: 20,
            states,
        },
        small,
    ];
    block_states_plot(&path, &layers).unwrap();
    let img = read_png(&path);
    assert!(img.width <= 2000);
    let (d, u, p) = (img.count(DENSE), img.count(UNIFIED), img.count(PRUNED));
    // Legend swatches add a few hundred pixels each; the grids dominate.
    assert!(d > 0 && u > 0 && p > 0);
    let (d, u, p) = (d as f64, u as f64, p as f64);
    assert!((d / u - 5.0 / 3.0).abs() < 0.25, "dense/unified {d}/{u}");
    assert!((u / p - 3.0 / 2.0).abs() < 0.25, "unified/pruned {u}/{p}");
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn block_states_plot_wide_grid_fits_and_keeps_aspect() {
    let dir = temp_dir("blocks-wide");
    let path = dir.join("fc1.png");
    // LeNet-5 fc1: 500×800 weights in 4×4 blocks. All dense, so the dense-coloured
    // bounding box is the panel (plus the legend swatch, which is above and to the left).
    let layers = vec![LayerStates {
        name: "fc1".into(),
        grid_rows: 125,
        grid_cols: 200,
        states: vec![0; 125 * 200],
    }];
    block_states_plot(&path, &layers).unwrap();
    let img = read_png(&path);
    assert!(
        img.width <= 2000 && img.height <= 2000,
        "{}×{}",
        img.width,
        img.height
    );
    // Find the panel: the longest unbroken run of dense pixels across and down (the
    // legend swatch is a separate, shorter run).
    let dense_at = |x: u32, y: u32| {
        let i = (y * img.width + x) as usize * 3;
        img.rgb[i..i + 3] == DENSE
    };
    let longest = |line: &mut dyn Iterator<Item = bool>| {
        let (mut best, mut cur) = (0, 0);
        for on in line {
            cur = if on { cur + 1 } else { 0 };
            best = best.max(cur);
        }
        best
    };
    let row_run = (0..img.height)
        .map(|y| longest(&mut (0..img.width).map(|x| dense_at(x, y))))
        .max()
        .unwrap();
    let col_run = (0..img.width)
        .map(|x| longest(&mut (0..img.height).map(|y| dense_at(x, y))))
        .max()
        .unwrap();
    let aspect = row_run as f64 / col_run as f64;
    assert!((aspect - 200.0 / 125.0).abs() < 0.05, "aspect {aspect}");
    assert!(row_run > 400, "panel too small to read: {row_run} px");
    clean_up(&dir);
}

#[test]
fn block_states_plot_lenet5_layers_fit_one_image() {
    let dir = temp_dir("blocks-lenet5");
    let path = dir.join("lenet5.png");
    // LeNet-5 in 4×4 blocks; a fixed pseudo-random map with ~50% pruned, ~30% unified.
    let shapes = [
        ("conv1", 5, 7),
        ("conv2", 13, 125),
        ("fc1", 125, 200),
        ("fc2", 3, 125),
    ];
    let mut seed = 0x9e37_79b9_u32;
    let layers: Vec<LayerStates> = shapes
        .iter()
        .map(|&(name, rows, cols)| LayerStates {
            name: name.into(),
            grid_rows: rows,
            grid_cols: cols,
            states: (0..rows * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    match seed % 10 {
                        0..=1 => 0,
                        2..=4 => 1,
                        _ => 2,
                    }
                })
                .collect(),
        })
        .collect();
    block_states_plot(&path, &layers).unwrap();
    let img = read_png(&path);
    assert!(
        img.width <= 2000 && img.height <= 2000,
        "{}×{}",
        img.width,
        img.height
    );
    let (d, u, p) = (img.count(DENSE), img.count(UNIFIED), img.count(PRUNED));
    assert!(p > u && u > d && d > 0, "dense {d} unified {u} pruned {p}");
    clean_up(&dir);
}

#[test]
fn block_states_plot_downsamples_grids_wider_than_the_image() {
    let dir = temp_dir("blocks-huge");
    let path = dir.join("huge.png");
    // A VGG-sized fc (4096×25088 weights in 4×4 blocks): 1024×6272 blocks, far more
    // columns than pixels. Left half dense, right half pruned.
    let (rows, cols) = (1024, 6272);
    let states: Vec<u8> = (0..rows * cols)
        .map(|i| if i % cols < cols / 2 { 0 } else { 2 })
        .collect();
    block_states_plot(
        &path,
        &[LayerStates {
            name: "fc6".into(),
            grid_rows: rows,
            grid_cols: cols,
            states,
        }],
    )
    .unwrap();
    let img = read_png(&path);
    assert!(img.width <= 2000);
    let (d, p) = (img.count(DENSE) as f64, img.count(PRUNED) as f64);
    assert!(
        d > 1000.0 && (d / p - 1.0).abs() < 0.1,
        "dense {d} pruned {p}"
    );
    clean_up(&dir);
}

#[test]
fn empty_input_still_writes_a_plot_with_a_note() {
    let dir = temp_dir("empty");
    type Plot = fn(&Path) -> anyhow::Result<()>;
    let cases: [(&str, Plot); 4] = [
        ("accuracy", |p| accuracy_plot(p, &[], &[])),
        ("residuals", |p| residuals_plot(p, &[])),
        ("blocks", |p| block_states_plot(p, &[])),
        ("sweep", |p| sweep_plot(p, &[], None)),
    ];
    for (name, plot) in cases {
        let path = dir.join(format!("{name}.png"));
        plot(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let img = read_png(&path);
        let hist = histogram(&img);
        let white = hist.get(&WHITE).copied().unwrap_or(0);
        let total = (img.width * img.height) as usize;
        // Axes and text are drawn, but most of the image is background.
        assert!(
            img.non_white() > 500,
            "{name}: only {} drawn pixels",
            img.non_white()
        );
        assert!(white > total / 2, "{name}: background {white} of {total}");
    }
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn non_finite_values_are_skipped() {
    let dir = temp_dir("nonfinite");
    let points = vec![
        EpochPoint {
            epoch: 1,
            phase: "dense".into(),
            loss: f64::NAN,
            test_accuracy: Some(f64::INFINITY),
        },
        EpochPoint {
            epoch: 2,
            phase: "dense".into(),
            loss: 0.3,
            test_accuracy: Some(97.0),
        },
        EpochPoint {
            epoch: 3,
            phase: "custom".into(),
            loss: -1.0,
            test_accuracy: None,
        },
    ];
    accuracy_plot(&dir.join("a.png"), &points, &[("nan".into(), f64::NAN)]).unwrap();
    let rounds = vec![
        RoundPoint {
            round: 1,
            rho: f64::NAN,
            primal: f64::INFINITY,
            dual: -0.0,
        },
        RoundPoint {
            round: 2,
            rho: 0.01,
            primal: 0.1,
            dual: 0.02,
        },
    ];
    residuals_plot(&dir.join("r.png"), &rounds).unwrap();
    let sweep = vec![
        SweepPoint {
            method: "admm".into(),
            compression_ratio: f64::INFINITY,
            accuracy: 90.0,
        },
        SweepPoint {
            method: "admm".into(),
            compression_ratio: 4.0,
            accuracy: f64::NAN,
        },
        SweepPoint {
            method: "admm".into(),
            compression_ratio: 0.0,
            accuracy: 90.0,
        },
    ];
    sweep_plot(&dir.join("s.png"), &sweep, Some(f64::NAN)).unwrap();
    for f in ["a.png", "r.png", "s.png"] {
        read_png(&dir.join(f));
    }
    clean_up(&dir);
}

#[test]
fn bad_block_maps_are_errors_naming_the_layer() {
    let dir = temp_dir("badgrid");
    let path = dir.join("blocks.png");
    let good = LayerStates {
        name: "conv1".into(),
        grid_rows: 2,
        grid_cols: 2,
        states: vec![0; 4],
    };
    let short = LayerStates {
        name: "fc2_short".into(),
        grid_rows: 3,
        grid_cols: 4,
        states: vec![0; 11],
    };
    let err = block_states_plot(&path, &[good.clone(), short]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("fc2_short"), "{msg}");
    assert!(msg.contains("11") && msg.contains("12"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    let bad_state = LayerStates {
        name: "fc3_state".into(),
        grid_rows: 1,
        grid_cols: 3,
        states: vec![0, 3, 1],
    };
    let msg = format!(
        "{:#}",
        block_states_plot(&path, &[good, bad_state]).unwrap_err()
    );
    assert!(
        msg.contains("fc3_state") && msg.contains("state 3"),
        "{msg}"
    );

    let overflow = LayerStates {
        name: "huge".into(),
        grid_rows: usize::MAX,
        grid_cols: 2,
        states: vec![],
    };
    let msg = format!("{:#}", block_states_plot(&path, &[overflow]).unwrap_err());
    assert!(msg.contains("huge"), "{msg}");

    assert!(!path.exists(), "a failed plot must not write a file");
    assert_no_temp_files(&dir);
    clean_up(&dir);
}

#[test]
fn extreme_values_neither_hang_nor_panic() {
    let dir = temp_dir("extreme");
    let rounds: Vec<RoundPoint> = [5e-324, 1e-310, f64::MAX, 1e300, 0.5]
        .iter()
        .enumerate()
        .map(|(i, &v)| RoundPoint {
            round: i,
            rho: v,
            primal: v,
            dual: v,
        })
        .collect();
    residuals_plot(&dir.join("r.png"), &rounds).unwrap();
    let sweep = vec![
        SweepPoint {
            method: "tiny".into(),
            compression_ratio: 5e-324,
            accuracy: -1e300,
        },
        SweepPoint {
            method: "huge".into(),
            compression_ratio: f64::MAX,
            accuracy: 1e300,
        },
    ];
    sweep_plot(&dir.join("s.png"), &sweep, Some(f64::MAX)).unwrap();
    let points = vec![EpochPoint {
        epoch: usize::MAX,
        phase: String::new(),
        loss: f64::MIN_POSITIVE,
        test_accuracy: Some(-f64::MAX),
    }];
    accuracy_plot(&dir.join("a.png"), &points, &[("max".into(), f64::MAX)]).unwrap();
    for f in ["r.png", "s.png", "a.png"] {
        read_png(&dir.join(f));
    }
    // Hundreds of layers would need an image taller than the cap: an error, not 1 GB.
    let many: Vec<LayerStates> = (0..400)
        .map(|i| LayerStates {
            name: format!("l{i}"),
            grid_rows: 4,
            grid_cols: 4,
            states: vec![0; 16],
        })
        .collect();
    let msg = format!(
        "{:#}",
        block_states_plot(&dir.join("b.png"), &many).unwrap_err()
    );
    assert!(msg.contains("400 layers"), "{msg}");
    clean_up(&dir);
}

#[test]
fn unwritable_path_is_an_error_naming_it() {
    let dir = temp_dir("unwritable");
    // A folder that does not exist, and a "folder" that is a file.
    let missing = dir.join("no-such-dir").join("plot.png");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("plot.png");
    for path in [missing, under_file] {
        let results = [
            accuracy_plot(&path, &run_epochs(), &[]),
            residuals_plot(&path, &[]),
            block_states_plot(&path, &[]),
            sweep_plot(&path, &[], Some(99.0)),
        ];
        for r in results {
            let msg = format!("{:#}", r.unwrap_err());
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }
    clean_up(&dir);
}
