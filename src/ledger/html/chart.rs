//! The two chart shapes of the report page, drawn by plotters' SVG backend into a string:
//! horizontal grouped bars (categories with long names: features, models, users) and vertical
//! stacked columns (days, histogram bins). Labels arrive already cut by `shape::label`;
//! plotters escapes every text and attribute value it writes.

use plotters::prelude::*;

/// Width of every chart, px (the page is laid out for a 1,200 px window).
const WIDTH: u32 = 1000;
/// Tableau 10: distinct, colour-blind-friendly series colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

/// The `i`th series colour (the palette repeats past ten).
pub(super) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// An axis tick for a count or a duration: whole numbers plain, fractions to two places
/// without trailing zeros.
pub(super) fn num_tick(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// An axis tick for a count of requests: whole numbers only (a half request means nothing).
pub(super) fn count_tick(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// One series of a bar chart: its name (for the legend), colour and one value per category.
pub(super) struct Series {
    /// Legend name.
    pub(super) name: String,
    /// Fill colour.
    pub(super) color: RGBColor,
    /// One value per category, in label order.
    pub(super) values: Vec<f64>,
}

fn chart_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The category whose centre is the axis value `v` (an integer in `0..n`), if any: tick
/// points between categories get no label.
fn category(v: f64, n: usize) -> Option<usize> {
    let r = v.round();
    ((v - r).abs() < 1e-6 && r >= 0.0 && r < n as f64).then_some(r as usize)
}

/// Horizontal grouped bars: one row per label (top to bottom), one bar per series in it.
pub(super) fn hbars(
    labels: &[String],
    series: &[Series],
    tick: &dyn Fn(f64) -> String,
    desc: &str,
) -> Result<String, String> {
    let n = labels.len();
    let k = series.len().max(1);
    let row_px = 14 * k as u32 + 12;
    let height = 60 + row_px * n as u32;
    // The naive font estimate plotters uses without a font feature is 0.7 em per byte;
    // size the label column from the longest label instead of guessing.
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let label_px = (longest as u32 * 7 + 16).clamp(60, 320);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let xmax = if max > 0.0 { max * 1.08 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        // Row r is centred on r: the axis's tick points (integers) fall on the bars.
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(label_px)
            .build_cartesian_2d(0f64..xmax, -0.5f64..n as f64 - 0.5)
            .map_err(chart_err)?;
        // Category i is drawn at row n-1-i, so the first (most expensive) is on top.
        let y_label = |v: &f64| match category(*v, n) {
            Some(row) => labels[n - 1 - row].clone(),
            None => String::new(),
        };
        chart
            .configure_mesh()
            // Grid lines at the labelled ticks only: the finer ones were a grey wash.
            .max_light_lines(0)
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&y_label)
            .x_label_formatter(&|v| tick(*v))
            .x_desc(desc)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(chart_err)?;
        let band = 0.8 / k as f64;
        for (s, ser) in series.iter().enumerate() {
            chart
                .draw_series(ser.values.iter().enumerate().map(|(i, &v)| {
                    let top = (n - 1 - i) as f64 + 0.4 - band * s as f64;
                    Rectangle::new([(0.0, top - band), (v, top)], ser.color.filled())
                }))
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

/// Vertical stacked bars: one column per label, series stacked bottom to top.
/// `tops[s][i]` is the top of series `s` in column `i` (its bottom is the previous top).
pub(super) fn vstack(
    labels: &[String],
    series: &[(String, RGBColor)],
    tops: &[Vec<f64>],
    tick: &dyn Fn(f64) -> String,
    desc: &str,
) -> Result<String, String> {
    let n = labels.len();
    let max = tops
        .iter()
        .flat_map(|t| t.iter().copied())
        .fold(0.0, f64::max);
    let ymax = if max > 0.0 { max * 1.08 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        // Column i is centred on i: the axis's tick points (integers) fall on the bars.
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(30)
            .x_label_area_size(44)
            .y_label_area_size(90)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..ymax)
            .map_err(chart_err)?;
        let x_label = |v: &f64| category(*v, n).map_or(String::new(), |i| labels[i].clone());
        chart
            .configure_mesh()
            .max_light_lines(0)
            .disable_x_mesh()
            // At most 16 labels under the axis: a year of days would be unreadable.
            .x_labels(n.min(16))
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v| tick(*v))
            .y_desc(desc)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(chart_err)?;
        let pad = if n > 60 { 0.0 } else { 0.12 };
        for (s, (_, color)) in series.iter().enumerate() {
            chart
                .draw_series((0..n).filter_map(|i| {
                    let bottom = if s == 0 { 0.0 } else { tops[s - 1][i] };
                    let top = tops[s][i];
                    (top > bottom).then(|| {
                        Rectangle::new(
                            [(i as f64 - 0.5 + pad, bottom), (i as f64 + 0.5 - pad, top)],
                            color.filled(),
                        )
                    })
                }))
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}
