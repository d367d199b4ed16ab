//! PNG plots of a compression run, for `train-gpu` and its report: accuracy and loss per
//! epoch, ADMM residuals per round (docs/METHOD.md §3), the block-state map of every layer
//! (§1), accuracy against compression ratio across methods, and each layer's loss
//! increase against its compression ratio (`train-gpu sensitivity`).
//!
//! Plain data in, a PNG file out. Every function renders into memory and writes through
//! [`crate::fsio::write_atomic`], so a reader never sees a half-written image and a
//! failed call leaves any older file in place. Text uses DejaVu Sans embedded in the
//! binary (assets/fonts/, licence beside it), so nothing depends on system fonts.
//!
//! Input handling, the same for all five functions:
//! - empty input is not an error: the plot is still written, with empty axes (or an empty
//!   page) and a "no data" note, so a report that links the image never links nothing;
//! - values that cannot be drawn are skipped, and the plot says how many: NaN, ±∞, zero
//!   or negative values on a log axis, and magnitudes past 1e300 (or under 1e-300 on a
//!   log axis), which leave no room to pad the axis;
//! - inconsistent input (a block-state map whose length does not match its grid, or a
//!   state other than 0, 1, 2) is an error naming the layer.
//!
//! Every error carries the output path as context.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use plotters::coord::Shift;
use plotters::coord::combinators::WithKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One epoch of training, counted across the whole run (dense pre-training, ADMM,
/// masked retraining).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    /// 1-based, counted across the whole run.
    pub epoch: usize,
    /// "dense", "admm", "retrain"; any other name gets a colour of its own.
    pub phase: String,
    pub loss: f64,
    /// Percent; `None` where the epoch was not evaluated.
    pub test_accuracy: Option<f64>,
}

/// One ADMM round (docs/METHOD.md §3): penalty ρ and the primal and dual residuals.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPoint {
    pub round: usize,
    pub rho: f64,
    pub primal: f64,
    pub dual: f64,
}

/// The block-state map of one layer (docs/METHOD.md §1).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStates {
    pub name: String,
    pub grid_rows: usize,
    pub grid_cols: usize,
    /// Row-major over the block grid: 0 dense, 1 unified, 2 pruned.
    pub states: Vec<u8>,
}

/// One point of an accuracy / compression trade-off sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// e.g. "admm", "one-shot", "prune-only", "unify-only", "mixed".
    pub method: String,
    pub compression_ratio: f64,
    /// Percent.
    pub accuracy: f64,
}

/// One layer's sensitivity (`train-gpu sensitivity`): the model's loss increase with the
/// layer alone compressed, at each measured compression ratio of the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SensitivityCurve {
    pub layer: String,
    /// `(compression ratio, loss increase)`, in any order.
    pub points: Vec<(f64, f64)>,
}

/// Plotters looks fonts up by family name; its mesh, legend and caption defaults all ask
/// for "sans-serif", so registering under that name makes every default text work.
const FAMILY: &str = "sans-serif";
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Colour-blind-safe categorical colours (matplotlib's tab10), for lines.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Block-state colours, indexed by state (dense, unified, pruned). Pruned is a light grey
/// because a pruned block stores nothing: it should read as "empty", not as a value.
const STATE_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 214, 214),
];
const STATE_NAMES: [&str; 3] = ["dense", "unified", "pruned"];

/// Renders an accuracy-and-loss plot: test accuracy per epoch (top panel, with `marks` as
/// dashed horizontal reference lines, e.g. the dense accuracy and the accuracy right after
/// the hard projection) and the training loss on a log axis (bottom panel). Both panels
/// shade the epochs of each phase. Points need not be sorted; epochs without an accuracy
/// are left out of the accuracy line only; non-positive losses cannot go on the log axis
/// and are skipped like NaN.
pub fn accuracy_plot(path: &Path, points: &[EpochPoint], marks: &[(String, f64)]) -> Result<()> {
    with_path(path, || {
        save(path, (1200, 800), |root| draw_accuracy(root, points, marks))
    })
}

/// Renders the primal and dual residual per ADMM round on a log axis, with ρ as a dashed
/// line on a second log axis at the right. Zero residuals (e.g. the dual residual of the
/// first round) cannot go on a log axis and are skipped like NaN.
pub fn residuals_plot(path: &Path, rounds: &[RoundPoint]) -> Result<()> {
    with_path(path, || {
        save(path, (1200, 700), |root| draw_residuals(root, rounds))
    })
}

/// Renders one panel per layer, each block a filled cell coloured by its state, with a
/// legend and the per-layer and total counts. Each panel keeps the grid's aspect ratio
/// and is scaled to fit an image at most 2000 px wide; where blocks are smaller than a
/// pixel, a pixel shows the mix of the blocks it covers (its colour is their average).
/// Panels shrink as layers are added; a net so deep that the image would pass 30000 px
/// in height (a few hundred layers) is an error: plot its layers in groups.
pub fn block_states_plot(path: &Path, layers: &[LayerStates]) -> Result<()> {
    with_path(path, || {
        let counts = layers
            .iter()
            .map(count_states)
            .collect::<Result<Vec<_>>>()?;
        let layout = BlockLayout::new(layers);
        ensure!(
            layout.height <= BS_MAX_HEIGHT,
            "{} layers need a {} px tall image (at most {BS_MAX_HEIGHT}); plot them in groups",
            layers.len(),
            layout.height
        );
        save(path, (layout.width, layout.height), |root| {
            draw_block_states(root, layers, &counts, &layout)
        })
    })
}

/// Renders accuracy against compression ratio (log axis), one coloured line with markers
/// per method in order of first appearance, and the dense accuracy as a dashed line.
/// Points need not be sorted; each method's line runs in order of compression ratio.
pub fn sweep_plot(path: &Path, points: &[SweepPoint], dense_accuracy: Option<f64>) -> Result<()> {
    with_path(path, || {
        save(path, (1200, 800), |root| {
            draw_sweep(root, points, dense_accuracy)
        })
    })
}

/// Renders loss increase against compression ratio (log axis), one colour per layer in
/// the given order: every measured point as a dot, and a line through the layer's best
/// trade-offs (the points no other point beats with a higher ratio and a smaller
/// increase), with a legend of the layers.
pub fn sensitivity_plot(path: &Path, curves: &[SensitivityCurve]) -> Result<()> {
    with_path(path, || {
        save(path, (1200, 800), |root| draw_sensitivity(root, curves))
    })
}

fn with_path(path: &Path, f: impl FnOnce() -> Result<()>) -> Result<()> {
    f().with_context(|| format!("plot {}", path.display()))
}

fn ensure_font() -> Result<()> {
    // plotters keeps registered fonts in a global table; registering once per process is
    // enough, and the result is cached so a bad font fails every call the same way.
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(
        ok,
        "the embedded font assets/fonts/DejaVuSans.ttf cannot be parsed"
    );
    Ok(())
}

/// Draws into an RGB buffer, encodes it as PNG in memory and writes it atomically.
fn save(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    ensure_font()?;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let png = encode_png(&rgb, w, h)?;
    crate::fsio::write_atomic(path, &png)?;
    Ok(())
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Plots are flat colour: the fast deflate already compresses them well, and the
    // block-state map can be millions of pixels.
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().context("encoding PNG")?;
    writer.write_image_data(rgb).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(out)
}

fn text_style(size: f64) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

fn centred(size: f64) -> TextStyle<'static> {
    text_style(size).pos(Pos::new(HPos::Center, VPos::Center))
}

/// Writes `msg` in the middle of a chart's plotting area.
fn note_in_chart<X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    chart: &ChartContext<BitMapBackend, Cartesian2d<X, Y>>,
    msg: &str,
) -> Result<()> {
    let area = chart.plotting_area();
    let (w, h) = area.dim_in_pixel();
    area.strip_coord_spec().draw_text(
        msg,
        &centred(22.0).color(&RGBColor(110, 110, 110)),
        (w as i32 / 2, h as i32 / 2),
    )?;
    Ok(())
}

/// Whether `v` can go on a linear axis. Past ±1e300 the padding overflows to ∞.
fn on_linear_axis(v: f64) -> bool {
    v.is_finite() && v.abs() <= 1e300
}

/// Whether `v` can go on a log axis: positive, and far enough from the ends of f64 that
/// the padding neither reaches 0 nor ∞.
fn on_log_axis(v: f64) -> bool {
    (1e-300..=1e300).contains(&v)
}

/// A padded linear range around the finite `values`, `default` when there are none.
fn linear_range(values: impl IntoIterator<Item = f64>, default: Range<f64>) -> Range<f64> {
    let (lo, hi) = min_max(values).unwrap_or((default.start, default.end));
    // A single value, or a spread lost to rounding, still needs a range of some width.
    let pad = if hi > lo {
        0.06 * (hi - lo)
    } else {
        0.5f64.max(hi.abs() * 1e-6)
    };
    lo - pad..hi + pad
}

/// A linear range for percentages: padded, but never past 0 or 100 when the data is not.
fn percent_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    let r = linear_range(values.iter().copied(), 0.0..100.0);
    let (lo, hi) = min_max(values).unwrap_or((0.0, 100.0));
    let start = if lo >= 0.0 { r.start.max(0.0) } else { r.start };
    let end = if hi <= 100.0 { r.end.min(100.0) } else { r.end };
    // Everything at exactly 100 (or 0) would otherwise leave an empty range.
    if end - start < 1e-9 {
        start - 0.5..end + 0.5
    } else {
        start..end
    }
}

/// A log range around the finite positive `values`, at least one decade wide so the axis
/// always gets labelled ticks; `default` when there are none.
fn log_range(values: impl IntoIterator<Item = f64>, default: Range<f64>) -> Range<f64> {
    let positive = values.into_iter().filter(|&v| on_log_axis(v));
    let (lo, hi) = min_max(positive).unwrap_or((default.start, default.end));
    let (mut lo, mut hi) = (lo / 1.25, hi * 1.25);
    if hi / lo < 10.0 {
        let grow = (10.0 / (hi / lo)).sqrt();
        lo /= grow;
        hi *= grow;
    }
    lo..hi
}

/// A log axis over `r` with ticks at 1-2-5 (or sparser) steps. plotters' own log ticks
/// skip whole decades on short ranges (2×…40× got labels only from 10× up), so the
/// ticks are chosen here; the minor grid marks 1…9 in each decade.
fn log_axis(r: Range<f64>) -> WithKeyPoints<LogCoord<f64>> {
    // `log_range` keeps r within 1e-300..1e300; the clamp only guards the loops below.
    let first = (r.start.log10().floor() as i32).clamp(-310, 310);
    let last = (r.end.log10().ceil() as i32).clamp(first, 310);
    let in_range = |mantissas: &[f64], every: i32| -> Vec<f64> {
        (first..=last)
            .filter(|d| (d - first) % every == 0)
            .flat_map(|d| mantissas.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| r.contains(v) || *v == r.end)
            .collect()
    };
    let mut bold = Vec::new();
    for mantissas in [
        &[1.0, 2.0, 3.0, 5.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 3.0],
        &[1.0],
    ] {
        bold = in_range(mantissas, 1);
        if bold.len() <= 12 {
            break;
        }
    }
    let mut every = 2;
    while bold.len() > 12 {
        bold = in_range(&[1.0], every);
        every += 1;
    }
    let light = if last - first <= 6 {
        in_range(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 1)
    } else {
        in_range(&[1.0], 1)
    };
    r.log_scale().with_key_points(bold).with_light_points(light)
}

fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// The x range for integer positions (epochs, rounds): half a step of room at each end.
fn index_range(values: impl IntoIterator<Item = usize>) -> Range<f64> {
    match values
        .into_iter()
        .fold(None, |acc: Option<(usize, usize)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        }) {
        None => 0.5..1.5,
        Some((lo, hi)) => {
            // Past 2^53 half a step is lost to rounding and the range would be empty.
            let pad = 0.5f64.max(hi as f64 * 1e-12);
            lo as f64 - pad..hi as f64 + pad
        }
    }
}

/// Label only whole numbers on an axis of epochs or rounds.
fn int_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Compact labels for log axes: plain decimals in the readable middle, else `1e-5`.
fn log_label(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 || (0.01..100_000.0).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// " (skipped: 1 accuracy, 2 losses)" for the values left out, or nothing.
fn skipped_note(counts: &[(usize, &str, &str)]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|&(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (skipped: {})", parts.join(", "))
    }
}

/// Grid lines: faint major lines; minor lines only on log axes (1…9 per decade), since
/// plotters' default minor grid on a linear axis turns a narrow range into a hatch.
const GRID: RGBAColor = RGBAColor(0, 0, 0, 0.18);
const MINOR_GRID: RGBAColor = RGBAColor(0, 0, 0, 0.06);

/// Light background colours for training phases.
fn phase_color(phase: &str, other_index: usize) -> RGBColor {
    const OTHERS: [RGBColor; 4] = [
        RGBColor(218, 208, 232),
        RGBColor(240, 220, 200),
        RGBColor(210, 230, 230),
        RGBColor(236, 222, 236),
    ];
    match phase {
        "dense" => RGBColor(214, 230, 245),
        "admm" => RGBColor(253, 224, 190),
        "retrain" => RGBColor(212, 238, 206),
        _ => OTHERS[other_index % OTHERS.len()],
    }
}

/// A run of consecutive epochs in one phase, as an x interval.
struct PhaseRun {
    phase: String,
    x: Range<f64>,
    color: RGBColor,
    first_of_phase: bool,
}

fn phase_runs(sorted: &[&EpochPoint]) -> Vec<PhaseRun> {
    let mut runs: Vec<PhaseRun> = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    for p in sorted {
        let (lo, hi) = (p.epoch as f64 - 0.5, p.epoch as f64 + 0.5);
        if let Some(last) = runs.last_mut()
            && last.phase == p.phase
        {
            last.x.end = hi;
            continue;
        }
        let first_of_phase = !runs.iter().any(|r| r.phase == p.phase);
        let other = match others.iter().position(|o| *o == p.phase) {
            Some(i) => i,
            None => {
                others.push(&p.phase);
                others.len() - 1
            }
        };
        runs.push(PhaseRun {
            phase: p.phase.clone(),
            x: lo..hi,
            color: phase_color(&p.phase, other),
            first_of_phase,
        });
    }
    runs
}

fn draw_accuracy(root: &Area, points: &[EpochPoint], marks: &[(String, f64)]) -> Result<()> {
    let mut sorted: Vec<&EpochPoint> = points.iter().collect();
    sorted.sort_by_key(|p| p.epoch);
    let runs = phase_runs(&sorted);
    let acc: Vec<(f64, f64)> = sorted
        .iter()
        .filter_map(|p| Some((p.epoch as f64, p.test_accuracy?)))
        .filter(|&(_, a)| on_linear_axis(a))
        .collect();
    let acc_given = sorted.iter().filter(|p| p.test_accuracy.is_some()).count();
    let loss: Vec<(f64, f64)> = sorted
        .iter()
        .map(|p| (p.epoch as f64, p.loss))
        .filter(|&(_, l)| on_log_axis(l))
        .collect();
    let marks: Vec<(&str, f64)> = marks
        .iter()
        .map(|(n, v)| (n.as_str(), *v))
        .filter(|&(_, v)| on_linear_axis(v))
        .collect();

    let x = index_range(sorted.iter().map(|p| p.epoch));
    let n_epochs = (x.end - x.start).round() as usize;
    let x_labels = n_epochs.clamp(2, 20);

    let root = root.titled(
        &format!(
            "Test accuracy and training loss per epoch{}",
            skipped_note(&[
                (acc_given - acc.len(), "accuracy", "accuracies"),
                (sorted.len() - loss.len(), "loss", "losses"),
            ])
        ),
        text_style(24.0),
    )?;
    let (_, h) = root.dim_in_pixel();
    let (upper, lower) = root.split_vertically(h * 3 / 5);

    // Accuracy panel.
    let y = percent_range(acc.iter().map(|p| p.1).chain(marks.iter().map(|m| m.1)));
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), y.clone())?;
    for run in &runs {
        let color = run.color;
        let anno = chart.draw_series(std::iter::once(Rectangle::new(
            [(run.x.start, y.start), (run.x.end, y.end)],
            color.filled(),
        )))?;
        if run.first_of_phase {
            anno.label(format!("phase: {}", run.phase))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.filled())
                });
        }
    }
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&int_label)
        .y_desc("test accuracy (%)")
        .label_style(text_style(14.0))
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, (name, v)) in marks.iter().enumerate() {
        // The first palette colour is the accuracy line itself.
        let style = TAB10[(i + 1) % TAB10.len()].stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x.start, *v), (x.end, *v)],
                10,
                6,
                style,
            ))?
            .label(format!("{name}: {v:.2}%"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    let line = TAB10[0].stroke_width(2);
    chart
        .draw_series(LineSeries::new(acc.iter().copied(), line))?
        .label("test accuracy")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], line));
    chart.draw_series(acc.iter().map(|&p| Circle::new(p, 3, TAB10[0].filled())))?;
    if acc.is_empty() {
        note_in_chart(
            &chart,
            if points.is_empty() {
                "no data"
            } else {
                "no test accuracy recorded"
            },
        )?;
    }
    if !runs.is_empty() || !marks.is_empty() || !acc.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(text_style(14.0))
            .draw()?;
    }

    // Loss panel.
    let ly = log_range(loss.iter().map(|p| p.1), 0.01..1.0);
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), log_axis(ly.clone()))?;
    for run in &runs {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(run.x.start, ly.start), (run.x.end, ly.end)],
            run.color.filled(),
        )))?;
    }
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&int_label)
        .y_label_formatter(&log_label)
        .x_desc("epoch")
        .y_desc("training loss (log)")
        .label_style(text_style(14.0))
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .x_max_light_lines(0)
        .draw()?;
    let red = TAB10[3];
    chart.draw_series(LineSeries::new(loss.iter().copied(), red.stroke_width(2)))?;
    chart.draw_series(loss.iter().map(|&p| Circle::new(p, 3, red.filled())))?;
    if loss.is_empty() {
        note_in_chart(
            &chart,
            if points.is_empty() {
                "no data"
            } else {
                "no drawable loss"
            },
        )?;
    }
    Ok(())
}

fn draw_residuals(root: &Area, rounds: &[RoundPoint]) -> Result<()> {
    let pick = |f: fn(&RoundPoint) -> f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = rounds
            .iter()
            .map(|r| (r.round as f64, f(r)))
            .filter(|&(_, y)| on_log_axis(y))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let primal = pick(|r| r.primal);
    let dual = pick(|r| r.dual);
    let rho = pick(|r| r.rho);
    let n = rounds.len();

    let x = index_range(rounds.iter().map(|r| r.round));
    let x_labels = ((x.end - x.start).round() as usize).clamp(2, 20);
    let y = log_range(primal.iter().chain(&dual).map(|p| p.1), 1e-3..1.0);
    let ry = log_range(rho.iter().map(|p| p.1), 1e-3..1.0);

    let caption = format!(
        "ADMM residuals per round{}",
        skipped_note(&[
            (n - primal.len(), "primal residual", "primal residuals"),
            (n - dual.len(), "dual residual", "dual residuals"),
            (n - rho.len(), "ρ", "ρ values"),
        ])
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, text_style(24.0))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .right_y_label_area_size(80)
        .build_cartesian_2d(x.clone(), log_axis(y))?
        .set_secondary_coord(x.clone(), log_axis(ry));
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&int_label)
        .y_label_formatter(&log_label)
        .x_desc("ADMM round")
        .y_desc("residual (log)")
        .label_style(text_style(14.0))
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .x_max_light_lines(0)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_label_formatter(&log_label)
        .y_desc("ρ (log)")
        .label_style(text_style(14.0))
        .draw()?;

    let (pc, dc, rc) = (TAB10[3], TAB10[0], RGBColor(90, 90, 90));
    chart
        .draw_series(LineSeries::new(primal.iter().copied(), pc.stroke_width(2)))?
        .label("primal ‖W − Z‖ / ‖W‖")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], pc.stroke_width(2)));
    chart.draw_series(primal.iter().map(|&p| Circle::new(p, 4, pc.filled())))?;
    chart
        .draw_series(LineSeries::new(dual.iter().copied(), dc.stroke_width(2)))?
        .label("dual ρ‖Zₖ − Zₖ₋₁‖")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], dc.stroke_width(2)));
    chart.draw_series(dual.iter().map(|&p| TriangleMarker::new(p, 5, dc.filled())))?;
    chart
        .draw_secondary_series(DashedLineSeries::new(
            rho.iter().copied(),
            8,
            5,
            rc.stroke_width(2),
        ))?
        .label("ρ (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], rc.stroke_width(2)));

    if primal.is_empty() && dual.is_empty() {
        note_in_chart(
            &chart,
            if rounds.is_empty() {
                "no data"
            } else {
                "no drawable residuals"
            },
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(text_style(15.0))
        .draw()?;
    Ok(())
}

fn draw_sweep(root: &Area, points: &[SweepPoint], dense: Option<f64>) -> Result<()> {
    let valid: Vec<&SweepPoint> = points
        .iter()
        .filter(|p| on_log_axis(p.compression_ratio) && on_linear_axis(p.accuracy))
        .collect();
    let dense = dense.filter(|&d| on_linear_axis(d));
    // Methods in order of first appearance, so colours follow the caller's order.
    let mut methods: Vec<&str> = Vec::new();
    for p in &valid {
        if !methods.contains(&p.method.as_str()) {
            methods.push(&p.method);
        }
    }

    let x = log_range(valid.iter().map(|p| p.compression_ratio), 1.0..10.0);
    let y = percent_range(valid.iter().map(|p| p.accuracy).chain(dense));
    let caption = format!(
        "Accuracy vs compression ratio{}",
        skipped_note(&[(points.len() - valid.len(), "point", "points")])
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, text_style(24.0))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(log_axis(x.clone()), y)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{}×", log_label(v)))
        .x_desc("compression ratio (log)")
        .y_desc("test accuracy (%)")
        .label_style(text_style(14.0))
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .y_max_light_lines(0)
        .draw()?;

    if let Some(d) = dense {
        let style = BLACK.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x.start, d), (x.end, d)],
                10,
                6,
                style,
            ))?
            .label(format!("dense: {d:.2}%"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    for (i, method) in methods.iter().enumerate() {
        let color = TAB10[i % TAB10.len()];
        let mut line: Vec<(f64, f64)> = valid
            .iter()
            .filter(|p| p.method == *method)
            .map(|p| (p.compression_ratio, p.accuracy))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
            .label(*method)
            .legend(move |(x, y)| {
                EmptyElement::at((x + 9, y))
                    + PathElement::new(vec![(-9, 0), (9, 0)], color.stroke_width(2))
                    + Circle::new((0, 0), 4, color.filled())
            });
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
    }
    if valid.is_empty() {
        note_in_chart(
            &chart,
            if points.is_empty() {
                "no data"
            } else {
                "no drawable points"
            },
        )?;
    }
    if !methods.is_empty() || dense.is_some() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(text_style(15.0))
            .draw()?;
    }
    Ok(())
}

/// The points of `points` that no other beats: sorted by ratio, each with a smaller
/// increase than every point of a higher ratio.
fn best_tradeoffs(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.total_cmp(&b.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|q| p.1 < q.1) {
            front.push(p);
        }
    }
    front.reverse();
    front
}

fn draw_sensitivity(root: &Area, curves: &[SensitivityCurve]) -> Result<()> {
    let total: usize = curves.iter().map(|c| c.points.len()).sum();
    let valid: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            c.points
                .iter()
                .copied()
                .filter(|&(r, d)| on_log_axis(r) && on_linear_axis(d))
                .collect()
        })
        .collect();
    let drawn: usize = valid.iter().map(Vec::len).sum();
    let all = || valid.iter().flatten();
    let x = log_range(all().map(|p| p.0), 1.0..10.0);
    let y = linear_range(all().map(|p| p.1), 0.0..1.0);
    let caption = format!(
        "Loss increase vs compression ratio, one layer at a time{}",
        skipped_note(&[(total - drawn, "point", "points")])
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, text_style(24.0))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(log_axis(x), y)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{}×", log_label(v)))
        .x_desc("compression ratio of the layer (log)")
        .y_desc("loss increase on the held-back images")
        .label_style(text_style(14.0))
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .y_max_light_lines(0)
        .draw()?;
    for (i, (curve, points)) in curves.iter().zip(&valid).enumerate() {
        let color = TAB10[i % TAB10.len()];
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 3, color.mix(0.45).filled())),
        )?;
        chart
            .draw_series(LineSeries::new(
                best_tradeoffs(points),
                color.stroke_width(2),
            ))?
            .label(curve.layer.as_str())
            .legend(move |(x, y)| {
                EmptyElement::at((x + 9, y))
                    + PathElement::new(vec![(-9, 0), (9, 0)], color.stroke_width(2))
                    + Circle::new((0, 0), 3, color.filled())
            });
    }
    if drawn == 0 {
        note_in_chart(
            &chart,
            if total == 0 {
                "no data"
            } else {
                "no drawable points"
            },
        )?;
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(text_style(15.0))
            .draw()?;
    }
    Ok(())
}

/// Checks one layer's map and counts its blocks per state.
fn count_states(layer: &LayerStates) -> Result<[usize; 3]> {
    let name = &layer.name;
    let Some(n) = layer.grid_rows.checked_mul(layer.grid_cols) else {
        bail!(
            "layer `{name}`: a {}×{} block grid is too large",
            layer.grid_rows,
            layer.grid_cols
        );
    };
    ensure!(
        layer.states.len() == n,
        "layer `{name}`: {} block states for a {}×{} block grid (expected {n})",
        layer.states.len(),
        layer.grid_rows,
        layer.grid_cols
    );
    let mut counts = [0usize; 3];
    for (i, &s) in layer.states.iter().enumerate() {
        match counts.get_mut(s as usize) {
            Some(c) => *c += 1,
            None => bail!(
                "layer `{name}`: block {i} has state {s}; expected 0 (dense), 1 (unified) or 2 (pruned)"
            ),
        }
    }
    Ok(counts)
}

const BS_MAX_WIDTH: u32 = 2000;
/// 2000 × 30000 RGB is 180 MB in memory; past that, one image per layer group is better.
const BS_MAX_HEIGHT: u32 = 30_000;
const BS_MIN_WIDTH: u32 = 1000;
const BS_MARGIN: u32 = 24;
const BS_HEADER: u32 = 96;
const BS_TITLE: u32 = 30;
const BS_GAP: u32 = 20;
/// Small grids (a 5×7 conv1) would otherwise blow up into giant squares.
const BS_MAX_CELL: f64 = 16.0;
/// Blocks at least this many pixels wide get a 1 px white gutter, so single blocks can
/// be told apart; smaller ones would lose too much colour to it.
const BS_GUTTER_FROM: f64 = 6.0;

/// Where each layer's panel goes, and the image size.
struct BlockLayout {
    width: u32,
    height: u32,
    /// Per layer: top of the panel title, and the grid's size in pixels (0×0 if empty).
    panels: Vec<(u32, u32, u32)>,
}

impl BlockLayout {
    fn new(layers: &[LayerStates]) -> Self {
        let avail_w = f64::from(BS_MAX_WIDTH - 2 * BS_MARGIN);
        // Many layers share a height budget of ~6000 px, so a deep net stays one image
        // of sensible size; a few layers get up to 640 px each.
        let max_panel_h = (6000.0 / layers.len().max(1) as f64).clamp(60.0, 640.0);
        let mut y = BS_HEADER;
        let mut widest = 0;
        let mut panels = Vec::with_capacity(layers.len());
        for l in layers {
            let (w, h) = if l.grid_rows == 0 || l.grid_cols == 0 {
                (0, 0)
            } else {
                let (r, c) = (l.grid_rows as f64, l.grid_cols as f64);
                let cell = BS_MAX_CELL.min(avail_w / c).min(max_panel_h / r);
                (
                    ((c * cell).round() as u32).max(1),
                    ((r * cell).round() as u32).max(1),
                )
            };
            panels.push((y, w, h));
            widest = widest.max(w);
            y += BS_TITLE + h + BS_GAP;
        }
        if layers.is_empty() {
            y += 60;
        }
        BlockLayout {
            width: (widest + 2 * BS_MARGIN).clamp(BS_MIN_WIDTH, BS_MAX_WIDTH),
            height: y + BS_MARGIN,
            panels,
        }
    }
}

/// The layer's grid as a `w`×`h` RGB image. Each pixel covers `cols/w` × `rows/h`
/// blocks: when that is under one block it shows the block under its centre, else the
/// average colour of all blocks it covers, so a map far wider than the image still shows
/// where the pruned and unified blocks are and in what proportion.
fn rasterize(layer: &LayerStates, w: u32, h: u32) -> Vec<u8> {
    let (rows, cols) = (layer.grid_rows, layer.grid_cols);
    let (sx, sy) = (cols as f64 / f64::from(w), rows as f64 / f64::from(h));
    let gutter = 1.0 / sx >= BS_GUTTER_FROM && 1.0 / sy >= BS_GUTTER_FROM;
    let span = |p: u32, scale: f64, n: usize| -> Range<usize> {
        let a = ((f64::from(p) * scale).floor() as usize).min(n - 1);
        let b = ((f64::from(p + 1) * scale).ceil() as usize).clamp(a + 1, n);
        a..b
    };
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for py in 0..h {
        let ry = span(py, sy, rows);
        for px in 0..w {
            let rx = span(px, sx, cols);
            let rgb = if sx <= 1.0 && sy <= 1.0 {
                let fy = (f64::from(py) + 0.5) * sy;
                let fx = (f64::from(px) + 0.5) * sx;
                let (r, c) = ((fy as usize).min(rows - 1), (fx as usize).min(cols - 1));
                let on_edge = fy - r as f64 > 1.0 - sy || fx - c as f64 > 1.0 - sx;
                if gutter && on_edge {
                    [255, 255, 255]
                } else {
                    let RGBColor(r, g, b) = STATE_COLORS[layer.states[r * cols + c] as usize];
                    [r, g, b]
                }
            } else {
                let mut sum = [0u64; 3];
                let mut n = 0u64;
                for r in ry.clone() {
                    for &s in &layer.states[r * cols + rx.start..r * cols + rx.end] {
                        let RGBColor(cr, cg, cb) = STATE_COLORS[s as usize];
                        sum[0] += u64::from(cr);
                        sum[1] += u64::from(cg);
                        sum[2] += u64::from(cb);
                        n += 1;
                    }
                }
                sum.map(|v| ((v + n / 2) / n) as u8)
            };
            out.extend_from_slice(&rgb);
        }
    }
    out
}

fn percent(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

fn draw_block_states(
    root: &Area,
    layers: &[LayerStates],
    counts: &[[usize; 3]],
    layout: &BlockLayout,
) -> Result<()> {
    let m = BS_MARGIN as i32;
    root.draw_text(
        &format!(
            "Block states per layer ({} layer{})",
            layers.len(),
            if layers.len() == 1 { "" } else { "s" }
        ),
        &text_style(24.0),
        (m, 14),
    )?;
    // Legend with totals over all layers.
    let mut totals = [0usize; 3];
    for c in counts {
        for s in 0..3 {
            totals[s] += c[s];
        }
    }
    let all: usize = totals.iter().sum();
    let mut x = m;
    for s in 0..3 {
        root.draw(&Rectangle::new(
            [(x, 56), (x + 18, 74)],
            STATE_COLORS[s].filled(),
        ))?;
        root.draw(&Rectangle::new([(x, 56), (x + 18, 74)], BLACK))?;
        let label = format!(
            "{}: {} ({:.1}%)",
            STATE_NAMES[s],
            totals[s],
            percent(totals[s], all)
        );
        root.draw_text(&label, &text_style(16.0), (x + 26, 57))?;
        x += 300;
    }
    if layers.is_empty() {
        root.draw_text(
            "no data",
            &centred(22.0).color(&RGBColor(110, 110, 110)),
            (layout.width as i32 / 2, (BS_HEADER + 30) as i32),
        )?;
    }

    for ((layer, c), &(top, w, h)) in layers.iter().zip(counts).zip(&layout.panels) {
        let n: usize = c.iter().sum();
        let title = if n == 0 {
            format!("{}: empty block grid", layer.name)
        } else {
            format!(
                "{}: {}×{} blocks · dense {} ({:.1}%) · unified {} ({:.1}%) · pruned {} ({:.1}%)",
                layer.name,
                layer.grid_rows,
                layer.grid_cols,
                c[0],
                percent(c[0], n),
                c[1],
                percent(c[1], n),
                c[2],
                percent(c[2], n)
            )
        };
        root.draw_text(&title, &text_style(16.0), (m, top as i32 + 4))?;
        if w == 0 || h == 0 {
            continue;
        }
        let y0 = (top + BS_TITLE) as i32;
        let pixels = rasterize(layer, w, h);
        let Some(image) = BitMapElement::with_owned_buffer((m, y0), (w, h), pixels) else {
            bail!(
                "layer `{}`: internal error sizing its {w}×{h} image",
                layer.name
            );
        };
        root.draw(&image)?;
        root.draw(&Rectangle::new(
            [(m - 1, y0 - 1), (m + w as i32, y0 + h as i32)],
            RGBColor(60, 60, 60),
        ))?;
    }
    Ok(())
}
