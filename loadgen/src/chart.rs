//! Charts as hand-written SVG, and the self-contained HTML report that shows
//! them beside the tables: the latency percentile distribution, the timeline
//! of a run (delivered and offered rate, p99), and for `capacity` the
//! delivered rate and p99 against the offered load with the knee marked.
//!
//! Pure string building; no I/O.

use std::fmt::Write as _;

use crate::report::{Point, Report, StepReport, Summary};

const W: f64 = 760.0;
const H: f64 = 340.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// An axis: linear or log10, with its range.
#[derive(Debug, Clone)]
struct Axis {
    label: String,
    min: f64,
    max: f64,
    log: bool,
}

impl Axis {
    fn linear(label: &str, min: f64, max: f64) -> Axis {
        let max = if max > min { max } else { min + 1.0 };
        Axis {
            label: label.into(),
            min,
            max,
            log: false,
        }
    }

    fn log(label: &str, min: f64, max: f64) -> Axis {
        let min = min.max(1e-6);
        let lo = 10f64.powf(min.log10().floor());
        let hi = 10f64.powf(max.max(min * 10.0).log10().ceil());
        Axis {
            label: label.into(),
            min: lo,
            max: hi,
            log: true,
        }
    }

    /// Position of `v` in `[0, 1]`.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut v = self.min;
            let mut out = Vec::new();
            while v <= self.max * 1.0001 && out.len() < 20 {
                out.push(v);
                v *= 10.0;
            }
            return out;
        }
        let span = self.max - self.min;
        let raw = span / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| span / s <= 6.0)
            .unwrap_or(mag * 10.0);
        let mut out = Vec::new();
        let mut v = (self.min / step).ceil() * step;
        while v <= self.max + step * 1e-9 && out.len() < 20 {
            out.push(v);
            v += step;
        }
        out
    }
}

/// A compact number: 1.2k, 3.4M, 0.25.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
    .replace(".000", "")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A series of a line chart.
struct Series {
    name: String,
    /// `None`: the palette colour of the series' position.
    color: Option<&'static str>,
    points: Vec<(f64, f64)>,
    right: bool,
    dashed: bool,
    dots: bool,
}

struct Chart {
    title: String,
    x: Axis,
    /// Custom x tick labels (value, label); empty: numeric ticks.
    x_ticks: Vec<(f64, String)>,
    y: Axis,
    y2: Option<Axis>,
    series: Vec<Series>,
    /// Vertical markers: (x, label).
    markers: Vec<(f64, String)>,
}

impl Chart {
    fn px(&self, x: f64) -> f64 {
        LEFT + self.x.frac(x) * (W - LEFT - RIGHT)
    }

    fn py(&self, axis: &Axis, y: f64) -> f64 {
        H - BOTTOM - axis.frac(y) * (H - TOP - BOTTOM)
    }

    fn svg(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            s,
            r##"<rect width="{W}" height="{H}" fill="#fff"/><text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
            W / 2.0,
            esc(&self.title)
        );
        // Grid and y ticks (left).
        for t in self.y.ticks() {
            let y = self.py(&self.y, t);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                short(t)
            );
        }
        if let Some(y2) = &self.y2 {
            for t in y2.ticks() {
                let y = self.py(y2, t);
                let _ = write!(
                    s,
                    r##"<text x="{}" y="{:.1}" fill="#d62728">{}</text>"##,
                    W - RIGHT + 6.0,
                    y + 4.0,
                    short(t)
                );
            }
            let _ = write!(
                s,
                r##"<text transform="translate({},{}) rotate(90)" text-anchor="middle" fill="#d62728">{}</text>"##,
                W - 14.0,
                (TOP + H - BOTTOM) / 2.0,
                esc(&y2.label)
            );
        }
        // X ticks.
        let ticks: Vec<(f64, String)> = if self.x_ticks.is_empty() {
            self.x.ticks().into_iter().map(|t| (t, short(t))).collect()
        } else {
            self.x_ticks.clone()
        };
        for (t, label) in ticks {
            let x = self.px(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#f0f0f0"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                esc(&label)
            );
        }
        // Axes and labels.
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            esc(&self.x.label),
            (TOP + H - BOTTOM) / 2.0,
            esc(&self.y.label)
        );
        // Markers.
        for (x, label) in &self.markers {
            let px = self.px(*x);
            let _ = write!(
                s,
                r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#444" stroke-dasharray="2,3"/><text x="{:.1}" y="{}" font-weight="bold">{}</text>"##,
                H - BOTTOM,
                px + 4.0,
                TOP + 14.0,
                esc(label)
            );
        }
        // Series and legend.
        for (i, se) in self.series.iter().enumerate() {
            let color = se.color.unwrap_or(COLORS[i % COLORS.len()]);
            let axis = if se.right {
                self.y2.as_ref().unwrap_or(&self.y)
            } else {
                &self.y
            };
            let pts: Vec<String> = se
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(axis, y)))
                .collect();
            if !pts.is_empty() {
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2"{} points="{}"/>"#,
                    if se.dashed {
                        r#" stroke-dasharray="6,4""#
                    } else {
                        ""
                    },
                    pts.join(" ")
                );
                if se.dots {
                    for p in &pts {
                        if let Some((x, y)) = p.split_once(',') {
                            let _ =
                                write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
                        }
                    }
                }
            }
            let ly = TOP + 14.0 + 14.0 * i as f64;
            let lx = LEFT + 10.0;
            let _ = write!(
                s,
                r##"<line x1="{lx}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{:.1}">{}</text>"##,
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                if se.dashed {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                },
                lx + 22.0,
                ly,
                esc(&se.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// `-log10(1 - p/100)`: 90 % → 1, 99 % → 2, … (the x of a percentile plot).
fn nines(p: f64) -> f64 {
    let q = (1.0 - p / 100.0).max(1e-7);
    -q.log10()
}

/// The latency percentile distribution of several curves `(percentile, ms)`.
pub fn latency_svg(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> String {
    let max_nines = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| nines(p.0)))
        .fold(2.0f64, f64::max)
        .min(7.0)
        .ceil();
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo == f64::MAX { 0.001 } else { lo };
    let y = if hi / lo.max(1e-6) > 30.0 {
        Axis::log("latency (ms, log)", lo, hi)
    } else {
        Axis::linear("latency (ms)", 0.0, hi * 1.1)
    };
    let labels = [
        "0%",
        "90%",
        "99%",
        "99.9%",
        "99.99%",
        "99.999%",
        "99.9999%",
        "99.99999%",
    ];
    let x_ticks = (0..=max_nines as usize)
        .map(|k| (k as f64, labels[k.min(labels.len() - 1)].to_owned()))
        .collect();
    Chart {
        title: title.into(),
        x: Axis::linear("percentile", 0.0, max_nines),
        x_ticks,
        y,
        y2: None,
        series: curves
            .iter()
            .map(|(name, c)| Series {
                name: name.clone(),
                color: None,
                points: c.iter().map(|&(p, ms)| (nines(p), ms)).collect(),
                right: false,
                dashed: false,
                dots: false,
            })
            .collect(),
        markers: Vec::new(),
    }
    .svg()
}

/// Delivered and offered rate and p99 over time.
pub fn timeline_svg(points: &[Point]) -> String {
    let t_max = points.last().map_or(1.0, |p| p.t_s);
    let rate_max = points
        .iter()
        .map(|p| p.delivered_per_s.max(p.offered_per_s.unwrap_or(0.0)))
        .fold(0.0, f64::max);
    let p99_max = points.iter().map(|p| p.p99_ms).fold(0.0, f64::max);
    let mut series = vec![Series {
        name: "delivered msgs/s".into(),
        color: Some("#1f77b4"),
        points: points.iter().map(|p| (p.t_s, p.delivered_per_s)).collect(),
        right: false,
        dashed: false,
        dots: false,
    }];
    if points.iter().any(|p| p.offered_per_s.is_some()) {
        series.push(Series {
            name: "offered msgs/s".into(),
            color: Some("#2ca02c"),
            points: points
                .iter()
                .filter_map(|p| Some((p.t_s, p.offered_per_s?)))
                .collect(),
            right: false,
            dashed: true,
            dots: false,
        });
    }
    series.push(Series {
        name: "p99 latency (ms, right)".into(),
        color: Some("#d62728"),
        points: points.iter().map(|p| (p.t_s, p.p99_ms)).collect(),
        right: true,
        dashed: false,
        dots: false,
    });
    let clients_max = points.iter().map(|p| p.clients_open).max().unwrap_or(0);
    Chart {
        title: format!("Timeline (clients open: up to {clients_max})"),
        x: Axis::linear("seconds", 0.0, t_max),
        x_ticks: Vec::new(),
        y: Axis::linear("messages / s", 0.0, rate_max * 1.1),
        y2: Some(Axis::linear("p99 (ms)", 0.0, p99_max * 1.2)),
        series,
        markers: Vec::new(),
    }
    .svg()
}

/// Capacity: delivered rate and p99 against offered load, knee marked.
pub fn capacity_svg(steps: &[StepReport]) -> String {
    let x_of = |s: &StepReport| s.summary.offered_per_s.unwrap_or(s.summary.delivered_per_s);
    let x_max = steps.iter().map(x_of).fold(0.0, f64::max);
    let y_max = steps
        .iter()
        .map(|s| s.summary.delivered_per_s.max(x_of(s)))
        .fold(0.0, f64::max);
    let p99_max = steps
        .iter()
        .map(|s| s.summary.latency.p99_ms)
        .fold(0.0, f64::max);
    let knee = steps.iter().rev().find(|s| s.pass);
    let markers = knee
        .map(|k| vec![(x_of(k), format!("knee: {} clients", k.summary.clients_open))])
        .unwrap_or_default();
    Chart {
        title: "Capacity: delivered rate and p99 against offered load".into(),
        x: Axis::linear(
            "offered msgs/s (feed events × subscribers)",
            0.0,
            x_max * 1.05,
        ),
        x_ticks: Vec::new(),
        y: Axis::linear("delivered msgs/s", 0.0, y_max * 1.1),
        y2: Some(Axis::linear("p99 (ms)", 0.0, p99_max * 1.2)),
        series: vec![
            Series {
                name: "delivered msgs/s".into(),
                color: None,
                points: steps
                    .iter()
                    .map(|s| (x_of(s), s.summary.delivered_per_s))
                    .collect(),
                right: false,
                dashed: false,
                dots: true,
            },
            Series {
                name: "p99 latency (ms, right)".into(),
                color: None,
                points: steps
                    .iter()
                    .map(|s| (x_of(s), s.summary.latency.p99_ms))
                    .collect(),
                right: true,
                dashed: false,
                dots: true,
            },
            Series {
                name: "delivered = offered".into(),
                color: None,
                points: vec![(0.0, 0.0), (x_max * 1.05, x_max * 1.05)],
                right: false,
                dashed: true,
                dots: false,
            },
        ],
        markers,
    }
    .svg()
}

fn summary_rows(out: &mut String, name: &str, s: &Summary) {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_owned(), f);
    let _ = write!(
        out,
        "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td class=\"{}\">{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
        esc(name),
        s.secs,
        s.clients_open,
        opt(s.offered_per_s, &short),
        short(s.delivered_per_s),
        opt(s.delivered_ratio, &|v| format!("{:.1}%", v * 100.0)),
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency.p999_ms,
        s.latency.max_ms,
        if s.violations == 0 { "ok" } else { "bad" },
        s.violations,
        s.stale.values().sum::<u64>(),
        s.loadgen_cpu_cores,
        opt(s.server_cpu_cores, &|v| format!("{v:.2}")),
    );
}

/// The HTML report: header, tables, charts, samples; one file, no scripts.
pub fn html_report(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tickwire-loadgen {} report</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0 16px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}} td:first-child,th:first-child{{text-align:left}}\
         .ok{{color:#2a7d2a;font-weight:bold}} .bad{{color:#c00;font-weight:bold}} code,pre{{background:#f4f4f4;padding:2px 4px}}\
         .charts svg{{display:block;margin:8px 0 20px;border:1px solid #eee}}</style></head><body>",
        esc(&r.kind)
    );
    let _ = write!(h, "<h1>tickwire-loadgen: {}</h1>", esc(&r.kind));
    let verdict_class = if r.summary.violations == 0 {
        "ok"
    } else {
        "bad"
    };
    if let Some(k) = r.knee.as_ref().filter(|k| !r.verdict.contains(&k.sentence)) {
        let _ = write!(h, "<p class=\"ok\">{}</p>", esc(&k.sentence));
    }
    let _ = write!(
        h,
        "<p class=\"{verdict_class}\">{} violations. {}</p>",
        r.summary.violations,
        esc(&r.verdict)
    );
    h.push_str("<h2>Environment</h2><table><tr><th>host</th><th>CPU</th><th>cores</th><th>kernel</th><th>rustc</th><th>git</th><th>open files</th><th>command</th></tr>");
    for e in &r.env {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&e.hostname),
            esc(&e.cpu_model),
            e.cores,
            e.cores_online,
            esc(&e.kernel),
            esc(&e.rustc),
            esc(&e.git_sha[..e.git_sha.len().min(12)]),
            if e.git_dirty { " (dirty)" } else { "" },
            e.open_file_limit.map_or("-".into(), |l| l.to_string()),
            esc(&e.command.join(" "))
        );
    }
    h.push_str("</table><h2>Results</h2><table><tr><th>window</th><th>secs</th><th>clients</th><th>offered/s</th><th>delivered/s</th><th>delivered</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>violations</th><th>stale</th><th>loadgen CPU</th><th>engine CPU</th></tr>");
    for p in &r.phases {
        let name = if p.measured {
            p.name.clone()
        } else {
            format!("({}, not measured)", p.name)
        };
        summary_rows(&mut h, &name, &p.summary);
    }
    for s in &r.steps {
        let name = format!(
            "step {}: {} clients, {} ev/s {}",
            s.index + 1,
            s.clients,
            short(s.rate),
            if s.pass {
                "pass".to_owned()
            } else {
                format!("BREAK ({})", s.failed.join("; "))
            }
        );
        summary_rows(&mut h, &name, &s.summary);
    }
    for n in &r.nodes {
        let name = format!("{} ({}, pid {}, {})", n.name, n.role, n.pid, n.ws);
        summary_rows(&mut h, &name, &n.summary);
    }
    summary_rows(&mut h, "total (measured)", &r.summary);
    h.push_str("</table>");
    let hops: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| n.hop_added_p50_ms.is_some())
        .map(|n| format!("{}: {}", n.name, n.hop_text()))
        .collect();
    if !hops.is_empty() {
        let _ = write!(
            h,
            "<p>Added by the NATS hop (edge percentile − origin percentile): {}.</p>",
            esc(&hops.join("; "))
        );
    }
    if let Some(c) = &r.cluster {
        let _ = write!(
            h,
            "<p>Cluster: {} into the origin at {} events/s over {} symbols, {} clients per node, {} worker(s) per engine; \
             engines {:.2} cores, nats-server {} cores ({}, {}).</p>",
            esc(&c.tickwire),
            short(c.rate),
            c.symbols,
            c.clients_per_node,
            c.workers,
            c.engines_cpu_cores,
            c.nats_cpu_cores.map_or("-".into(), |v| format!("{v:.2}")),
            esc(&c.nats_url),
            esc(&c.nats_version)
        );
    }
    let s = &r.summary;
    let _ = write!(
        h,
        "<p>Received {} messages ({} deltas, {} trades, {} snapshots, {} control), {:.1} MB. \
         Connections: {} started, {} upgraded, {} connect errors, {} handshake errors, {} churned, server closes {}.",
        s.messages,
        s.deltas,
        s.trades,
        s.snapshots,
        s.control,
        s.bytes as f64 / 1e6,
        s.connects,
        s.opened,
        s.connect_errors,
        s.handshake_errors,
        s.churned,
        esc(&format!("{:?}", s.server_closes))
    );
    if let Some(c) = s.received_per_loadgen_core {
        let _ = write!(
            h,
            " Loadgen's own cost: {} messages/s per loadgen core.",
            short(c)
        );
    }
    h.push_str("</p><div class=\"charts\">");
    // A cluster's figures are its nodes' curves (their mix is not one).
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = r
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Report::latency_curve(&n.summary)))
        .collect();
    if r.nodes.is_empty() {
        if r.steps.is_empty() {
            for p in r.phases.iter().filter(|p| p.measured) {
                curves.push((p.name.clone(), Report::latency_curve(&p.summary)));
            }
        } else {
            for st in &r.steps {
                curves.push((
                    format!("{} clients, {} ev/s", st.clients, short(st.rate)),
                    Report::latency_curve(&st.summary),
                ));
            }
        }
        if curves.len() != 1 {
            curves.push(("total".into(), Report::latency_curve(&r.summary)));
        }
    }
    h.push_str(&latency_svg(
        "Latency percentile distribution (exchange_ts → receipt, CO-corrected)",
        &curves,
    ));
    if !r.steps.is_empty() {
        h.push_str(&capacity_svg(&r.steps));
    }
    if !r.timeline.is_empty() {
        h.push_str(&timeline_svg(&r.timeline));
    }
    h.push_str("</div>");
    if !s.samples.is_empty() {
        h.push_str("<h2>Violation samples and notes</h2><pre>");
        for x in &s.samples {
            let _ = writeln!(h, "{}", esc(x));
        }
        h.push_str("</pre>");
    }
    if let Some(sc) = &r.scenario {
        let _ = write!(h, "<h2>Scenario</h2><pre>{}</pre>", esc(sc));
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(3_000_000.0), "3M");
        assert_eq!(short(3_250_000.0), "3.250M");
        assert_eq!(short(0.25), "0.25");
    }

    #[test]
    fn axes_map_and_tick() {
        let a = Axis::linear("x", 0.0, 100.0);
        assert_eq!(a.frac(50.0), 0.5);
        assert_eq!(a.ticks(), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let l = Axis::log("y", 0.3, 42.0);
        assert_eq!((l.min, l.max), (0.1, 100.0));
        assert!((l.frac(10.0) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(l.ticks().len(), 4);
        assert_eq!(nines(99.0).round(), 2.0);
    }

    #[test]
    fn svgs_are_well_formed_and_escape_text() {
        let curve = vec![(0.0, 0.1), (90.0, 0.5), (99.0, 2.0), (100.0, 9.0)];
        let svg = latency_svg("a <b>", &[("x&y".into(), curve)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("x&amp;y"));
        assert!(svg.contains("<polyline"));
        let steps: Vec<StepReport> = (1..4)
            .map(|i| StepReport {
                index: i,
                clients: 100 * i as u64,
                rate: 1000.0,
                pass: i < 3,
                summary: Summary {
                    clients_open: 100 * i as u64,
                    offered_per_s: Some(1e5 * i as f64),
                    delivered_per_s: 0.9e5 * i as f64,
                    ..Summary::default()
                },
                ..StepReport::default()
            })
            .collect();
        let svg = capacity_svg(&steps);
        assert!(svg.contains("knee: 200 clients"));
        let r = Report {
            steps,
            ..Report::default()
        };
        let html = html_report(&r);
        assert!(html.contains("<svg") && html.ends_with("</html>\n"));
    }
}
