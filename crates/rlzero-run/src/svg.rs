//! A minimal SVG line chart: enough for training curves (lines, a shaded band, axes with
//! ticks, a legend), with no font or system dependency, so it renders the same everywhere and
//! the report stays self-contained.

use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points; non-finite `y` values break the line.
    pub points: Vec<(f64, f64)>,
    /// Optional shaded band `(x, low, high)` drawn under the line (e.g. mean ± std).
    pub band: Vec<(f64, f64, f64)>,
}

/// A chart: title, axis labels, series.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Series, drawn in order with a fixed palette.
    pub series: Vec<Series>,
    /// A vertical marker `(x, label)`, e.g. the step where a curve first rises.
    pub marker: Option<(f64, String)>,
}

const W: f64 = 640.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Escapes text for SVG/HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick positions covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    // By index, not by accumulation: a step below the values' precision cannot stall the loop.
    (0..12)
        .map(|i| (first + i as f64) * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let finite = |v: f64| v.is_finite();
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| finite(*x));
        let ys = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        });
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let (mut y0, mut y1) = ys
            .filter(|y| finite(*y))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(svg, r##"<rect width="{W}" height="{H}" fill="#fff"/>"##);
        let _ = write!(
            svg,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        if !x0.is_finite() || !y0.is_finite() {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></svg>"##,
                W / 2.0,
                H / 2.0
            );
            return svg;
        }
        if x1 - x0 <= 1e-9 * x0.abs().max(x1.abs()).max(1.0) {
            x0 -= 0.5;
            x1 += 0.5;
        }
        if y1 - y0 <= 1e-9 * y0.abs().max(y1.abs()).max(1.0) {
            let pad = y0.abs().max(1.0) * 0.05;
            y0 -= pad;
            y1 += pad;
        }
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;
        // Axes and grid.
        for t in ticks(y0, y1) {
            let y = sy(t);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        for t in ticks(x0, x1) {
            let x = sx(t);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                fmt_tick(t)
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            LEFT + pw / 2.0,
            H - 8.0,
            escape(&self.x_label)
        );
        if let Some((mx, label)) = &self.marker {
            let x = sx(*mx);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#999" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#666">{}</text>"##,
                H - BOTTOM,
                x + 4.0,
                TOP + 12.0,
                escape(label)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let band: Vec<_> = s
                .band
                .iter()
                .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
                .collect();
            if band.len() > 1 {
                let mut d = String::new();
                for (k, b) in band.iter().enumerate() {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if k == 0 { "M" } else { "L" },
                        sx(b.0),
                        sy(b.2)
                    );
                }
                for b in band.iter().rev() {
                    let _ = write!(d, "L{:.1},{:.1} ", sx(b.0), sy(b.1));
                }
                let _ = write!(
                    svg,
                    r#"<path d="{d}Z" fill="{c}" fill-opacity="0.15" stroke="none"/>"#
                );
            }
            // Polylines, broken at non-finite values.
            let mut seg = String::new();
            let flush = |seg: &mut String, svg: &mut String| {
                if !seg.is_empty() {
                    let _ = write!(
                        svg,
                        r#"<polyline points="{seg}" fill="none" stroke="{c}" stroke-width="1.6"/>"#
                    );
                    seg.clear();
                }
            };
            for &(x, y) in &s.points {
                if x.is_finite() && y.is_finite() {
                    let _ = write!(seg, "{:.1},{:.1} ", sx(x), sy(y));
                } else {
                    flush(&mut seg, &mut svg);
                }
            }
            flush(&mut seg, &mut svg);
            if s.points.len() == 1 {
                let (x, y) = s.points[0];
                if x.is_finite() && y.is_finite() {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
            let ly = TOP + 14.0 + 14.0 * i as f64;
            let _ = write!(
                svg,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                LEFT + 8.0,
                LEFT + 24.0,
                LEFT + 28.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert!(ticks(1e6, 1e6 + 2.3e-10).len() <= 12);
        let t = ticks(3.0, 47.0);
        assert!(
            t[0] >= 3.0 && *t.last().unwrap() <= 47.0 && t.len() >= 3,
            "{t:?}"
        );
    }

    #[test]
    fn a_chart_is_valid_standalone_svg_with_escaped_text() {
        let c = Chart {
            title: "reward <mean>".into(),
            x_label: "step".into(),
            series: vec![Series {
                name: "a & b".into(),
                points: vec![(1.0, 0.1), (2.0, f64::NAN), (3.0, 0.5), (4.0, 0.9)],
                band: vec![(1.0, 0.0, 0.2), (3.0, 0.4, 0.6), (4.0, 0.8, 1.0)],
            }],
            marker: Some((3.0, "rises".into())),
        };
        let s = c.to_svg();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("reward &lt;mean&gt;") && s.contains("a &amp; b"));
        // The NaN breaks the line into two polylines.
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("<path"));
        let empty = Chart {
            series: vec![],
            ..c
        }
        .to_svg();
        assert!(empty.contains("no data"));
    }
}
