//! l3kit's pictures, drawn with plotters: the planner's coverage / E[d_t] frontier and the
//! rank / rows plot of an allocation, and plain line panels (`route --calibrate`'s controller
//! trajectory), each as SVG and PNG.
//!
//! PNGs are rasterised by plotters' bitmap backend with ab_glyph text, from a subset of
//! DejaVu Sans embedded in the binary (`fixtures/fonts/`, Bitstream Vera licence), so nothing
//! depends on system fonts, fontconfig or freetype. Both files are written atomically, and the
//! same data always gives the same bytes.

use crate::util::atomic_file;
use crate::util::error::{Error, Result};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../../fixtures/fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";
// Font sizes are even: plotters' ab_glyph renderer places each glyph at size / 2 plus its
// top edge and truncates, so an odd size shifts glyphs that rise above the baseline one pixel
// lower than those that do not (dots and commas end up floating in PNGs).

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is embedded and known good; a failure would only lose text in PNGs.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Colours for successive curves (colour-blind friendly, Okabe-Ito order).
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(120, 120, 120),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// One curve: label, (x, y) points, colour index.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
}

/// One panel of the frontier plot.
#[derive(Clone, Debug)]
pub struct FrontierPanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The optimal frontier per n_emb.
    pub curves: Vec<Series>,
    /// LZW points: (x, y) and the colour of their n_emb.
    pub lzw: Vec<((f64, f64), usize)>,
    /// The paper's default point.
    pub paper: Option<(f64, f64)>,
    pub paper_label: String,
}

/// One allocation of the rank / rows plot.
#[derive(Clone, Debug)]
pub struct RankSeries {
    pub label: String,
    pub rows: Vec<u32>,
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Both backends share one drawing routine through this trait.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draw into SVG text and an RGB buffer, then write both files atomically.
fn render_with<D: Draw>(d: &D, size: (u32, u32), svg: &Path, png: &Path) -> Result<()> {
    register_font();
    let fail = |path: &Path, e: Box<dyn std::error::Error>| {
        Error::input(format!("{}: drawing failed: {e}", path.display()))
    };
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        d.draw(&root).map_err(|e| fail(svg, e))?;
        root.present().map_err(|e| fail(svg, e.into()))?;
    }
    atomic_file::write_atomic(svg, text.as_bytes())?;
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        d.draw(&root).map_err(|e| fail(png, e))?;
        root.present().map_err(|e| fail(png, e.into()))?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, size.0, size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        let mut w = enc.write_header().map_err(|e| fail(png, Box::new(e)))?;
        w.write_image_data(&pixels)
            .map_err(|e| fail(png, Box::new(e)))?;
    }
    atomic_file::write_atomic(png, &bytes)
}

struct Frontier<'a>(&'a [FrontierPanel]);

impl Draw for Frontier<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let areas = root.split_evenly((1, self.0.len().max(1)));
        for (panel, area) in self.0.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        Ok(())
    }
}

fn draw_panel<DB: DrawingBackend>(p: &FrontierPanel, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let all = p
        .curves
        .iter()
        .flat_map(|c| c.points.iter().copied())
        .chain(p.lzw.iter().map(|x| x.0))
        .chain(p.paper);
    let (mut x_max, mut y_max) = (1.0f64, 0.0f64);
    for (x, y) in all {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let x_range = (0.9f64..x_max * 1.5).log_scale();
    let y_top = (y_max * 1.12 + 0.02).min(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 14))
        .x_label_formatter(&|x| format_axis(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for c in &p.curves {
        draw_curve(&mut chart, c)?;
    }
    if !p.lzw.is_empty() {
        chart
            .draw_series(
                p.lzw
                    .iter()
                    .map(|&(pt, i)| Circle::new(pt, 6, color(i).stroke_width(2))),
            )?
            .label("LZW walk (same n_emb)")
            .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.stroke_width(2)));
    }
    if let Some(pt) = p.paper {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(pt, 9, BLACK.filled())))?
            .label(p.paper_label.clone())
            .legend(|(x, y)| TriangleMarker::new((x + 9, y), 6, BLACK.filled()));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 12)
}

/// A curve with its points marked, and its legend entry.
fn draw_curve<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, c: &Series) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let col = color(c.color);
    chart
        .draw_series(LineSeries::new(
            c.points.iter().copied(),
            col.stroke_width(2),
        ))?
        .label(c.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
    chart.draw_series(c.points.iter().map(|&pt| Circle::new(pt, 2, col.filled())))?;
    Ok(())
}

fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font: u32,
) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, font))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

fn format_axis(x: f64) -> String {
    if x >= 10.0 || (x >= 1.0 && x.fract() == 0.0) {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The frontier plot: one panel per profile (training, held-out).
pub fn frontier(panels: &[FrontierPanel], svg: &Path, png: &Path) -> Result<()> {
    let width = 760 * panels.len().max(1) as u32;
    render_with(&Frontier(panels), (width, 560), svg, png)
}

struct RankRows<'a> {
    caption: &'a str,
    series: &'a [RankSeries],
    rank: Vec<u64>,
    k_max: u32,
}

impl Draw for RankRows<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let vocab = self.rank.len().max(2) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(self.caption, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(
                (1f64..vocab * 1.05).log_scale(),
                (0.9f64..self.k_max.max(2) as f64 * 1.15).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("token rank by training frequency (log)")
            .y_desc("rows d_t (log)")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 14))
            .x_label_formatter(&|x| format_axis(*x))
            .y_label_formatter(&|y| format_axis(*y))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        // One point per (log-rank column, rows) pair: the picture is the same, the files
        // stay small however large the vocabulary.
        let bins = 300.0;
        let span = vocab.ln();
        for (i, s) in self.series.iter().enumerate() {
            let col = color(i);
            let mut seen = std::collections::BTreeSet::new();
            for (t, &d) in s.rows.iter().enumerate() {
                let r = self.rank[t] as f64;
                let bin = ((r.ln() / span) * bins) as u64;
                seen.insert((bin, d));
            }
            let pts: Vec<(f64, f64)> = seen
                .into_iter()
                .map(|(bin, d)| (((bin as f64 + 0.5) / bins * span).exp(), d as f64))
                .collect();
            let radius = if i == 0 { 3 } else { 2 };
            let style = if i == 0 {
                col.mix(0.55).filled()
            } else {
                col.filled()
            };
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, radius, style)))?
                .label(s.label.clone())
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, col.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14)
    }
}

/// The rank / rows plot: tokens by training frequency rank (1 = most frequent, ties by id)
/// against their rows, one colour per allocation.
pub fn rank_rows(
    caption: &str,
    series: &[RankSeries],
    unigram: &[u64],
    k_max: u32,
    svg: &Path,
    png: &Path,
) -> Result<()> {
    let mut order: Vec<usize> = (0..unigram.len()).collect();
    order.sort_by(|&a, &b| unigram[b].cmp(&unigram[a]).then(a.cmp(&b)));
    let mut rank = vec![0u64; unigram.len()];
    for (i, &t) in order.iter().enumerate() {
        rank[t] = i as u64 + 1;
    }
    for s in series {
        if s.rows.len() != unigram.len() {
            return Err(Error::input(format!(
                "{}: {} rows for a vocabulary of {}",
                s.label,
                s.rows.len(),
                unigram.len()
            )));
        }
    }
    render_with(
        &RankRows {
            caption,
            series,
            rank,
            k_max,
        },
        (900, 560),
        svg,
        png,
    )
}

/// One panel of [`lines`]: curves on linear axes, with optional horizontal reference lines.
#[derive(Clone, Debug)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Series>,
    /// (y, label) drawn dashed across the panel.
    pub references: Vec<(f64, String)>,
}

struct Lines<'a>(&'a [LinePanel]);

impl Draw for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let areas = root.split_evenly((self.0.len().max(1), 1));
        for (p, area) in self.0.iter().zip(areas.iter()) {
            let pts = p.curves.iter().flat_map(|c| c.points.iter().copied());
            let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
            let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
            for (x, y) in pts.chain(p.references.iter().map(|r| (f64::NAN, r.0))) {
                if x.is_finite() {
                    x_min = x_min.min(x);
                    x_max = x_max.max(x);
                }
                if y.is_finite() {
                    y_min = y_min.min(y);
                    y_max = y_max.max(y);
                }
            }
            if x_min >= x_max || !x_min.is_finite() {
                // One batch (or none): widen to a visible span starting at 0.
                x_min = x_min.min(0.0);
                x_max = x_max.max(x_min + 1.0);
            }
            if y_min >= y_max || !y_min.is_finite() {
                let c = if y_min.is_finite() { y_min } else { 0.0 };
                (y_min, y_max) = (c - 0.5, c + 0.5);
            }
            let pad = (y_max - y_min) * 0.08;
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, (FAMILY, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x_min..x_max, (y_min - pad)..(y_max + pad))?;
            chart
                .configure_mesh()
                .x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 14))
                .x_label_formatter(&|x| {
                    if x.fract() == 0.0 {
                        format!("{x:.0}")
                    } else {
                        format!("{x:.1}")
                    }
                })
                .y_label_formatter(&|y| format!("{y:.3}"))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (y, label) in &p.references {
                let grey = RGBColor(120, 120, 120);
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x_min, *y), (x_max, *y)],
                        6,
                        4,
                        grey.stroke_width(1),
                    ))?
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
            }
            for c in &p.curves {
                draw_curve(&mut chart, c)?;
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 12)?;
        }
        Ok(())
    }
}

/// Panels of line curves stacked top to bottom.
pub fn lines(panels: &[LinePanel], svg: &Path, png: &Path) -> Result<()> {
    let height = 360 * panels.len().max(1) as u32;
    render_with(&Lines(panels), (900, height), svg, png)
}
