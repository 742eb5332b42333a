//! The pages' figures as inline SVG: line plots (singular-value spectra, captured energy) and the
//! lineage DAG. Built as data first (points, boxes) so tests can check the geometry, then written
//! with every text escaped. Colours are presentation attributes, not `style`, so the pages'
//! Content-Security-Policy (no inline styles) holds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// Escapes text for SVG/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563",
];

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot with linear x and linear or log10 y.
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub width: f64,
    pub height: f64,
}

const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 28.0;
const MARGIN_BOTTOM: f64 = 44.0;

/// Maps data to pixels.
pub struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    log_y: bool,
    width: f64,
    height: f64,
}

impl Frame {
    fn ty(&self, y: f64) -> f64 {
        if self.log_y {
            y.max(f64::MIN_POSITIVE).log10()
        } else {
            y
        }
    }

    /// Pixel position of a data point.
    pub fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let plot_w = self.width - MARGIN_LEFT - MARGIN_RIGHT;
        let plot_h = self.height - MARGIN_TOP - MARGIN_BOTTOM;
        let fx = if self.x1 > self.x0 {
            (x - self.x0) / (self.x1 - self.x0)
        } else {
            0.5
        };
        let fy = if self.y1 > self.y0 {
            (self.ty(y) - self.y0) / (self.y1 - self.y0)
        } else {
            0.5
        };
        (MARGIN_LEFT + fx * plot_w, MARGIN_TOP + (1.0 - fy) * plot_h)
    }
}

impl LinePlot {
    /// The data range (log10 of y for log plots; non-positive y are left out there).
    pub fn frame(&self) -> Frame {
        let mut x = (f64::INFINITY, f64::NEG_INFINITY);
        let mut y = (f64::INFINITY, f64::NEG_INFINITY);
        for (px, py) in self.points() {
            x = (x.0.min(px), x.1.max(px));
            let ty = if self.log_y { py.log10() } else { py };
            y = (y.0.min(ty), y.1.max(ty));
        }
        if !x.0.is_finite() {
            x = (0.0, 1.0);
            y = (0.0, 1.0);
        }
        if self.log_y {
            // Whole decades, so tick labels are round.
            y = (y.0.floor(), y.1.ceil().max(y.0.floor() + 1.0));
        } else {
            y = (y.0.min(0.0), y.1);
        }
        Frame {
            x0: x.0,
            x1: x.1,
            y0: y.0,
            y1: y.1,
            log_y: self.log_y,
            width: self.width,
            height: self.height,
        }
    }

    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
    }

    pub fn render(&self) -> String {
        let f = self.frame();
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title>"##,
            w = self.width,
            h = self.height,
            t = escape(&self.title),
        );
        let (left, bottom) = f.map(f.x0, if f.log_y { 10f64.powf(f.y0) } else { f.y0 });
        let (right, top) = f.map(f.x1, if f.log_y { 10f64.powf(f.y1) } else { f.y1 });
        let _ = write!(
            svg,
            r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#9ca3af"/>"##,
            right - left,
            bottom - top
        );
        // Y ticks: decades on log plots, five steps otherwise.
        let y_ticks: Vec<f64> = if f.log_y {
            let (lo, hi) = (f.y0 as i32, f.y1 as i32);
            let step = ((hi - lo) / 6).max(1);
            (lo..=hi)
                .step_by(step as usize)
                .map(|e| 10f64.powi(e))
                .collect()
        } else {
            (0..=4)
                .map(|i| f.y0 + (f.y1 - f.y0) * f64::from(i) / 4.0)
                .collect()
        };
        for v in y_ticks {
            let (_, y) = f.map(f.x0, v);
            let _ = write!(
                svg,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#374151">{}</text>"##,
                left - 4.0,
                y + 4.0,
                tick_label(v)
            );
        }
        let x_ticks: Vec<f64> = (0..=4)
            .map(|i| f.x0 + (f.x1 - f.x0) * f64::from(i) / 4.0)
            .collect();
        for v in x_ticks {
            let (x, _) = f.map(v, 1.0);
            let _ = write!(
                svg,
                r##"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#374151">{}</text>"##,
                bottom + 14.0,
                tick_label(v)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#111827">{}</text><text x="12" y="{:.1}" font-size="12" text-anchor="middle" fill="#111827" transform="rotate(-90 12 {:.1})">{}</text><text x="{left:.1}" y="16" font-size="13" fill="#111827">{}</text>"##,
            (left + right) / 2.0,
            self.height - 6.0,
            escape(&self.x_label),
            (top + bottom) / 2.0,
            (top + bottom) / 2.0,
            escape(&self.y_label),
            escape(&self.title),
        );
        for (i, s) in self.series.iter().enumerate() {
            let pts = self.polyline(&f, s);
            if pts.is_empty() {
                continue;
            }
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"##,
                PALETTE[i % PALETTE.len()],
                pts.iter()
                    .map(|(x, y)| format!("{x:.1},{y:.1}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                escape(&s.name)
            );
        }
        svg.push_str("</svg>");
        svg
    }

    /// A series' pixel coordinates (points a log plot cannot show are skipped).
    pub fn polyline(&self, f: &Frame, s: &Series) -> Vec<(f64, f64)> {
        s.points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
            .map(|&(x, y)| f.map(x, y))
            .collect()
    }
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-2 {
        format!("{v:.0e}")
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A node of the lineage graph.
pub struct DagNode {
    pub id: String,
    pub label: String,
    pub sublabel: String,
    pub href: String,
    /// The version the page is about (drawn highlighted).
    pub current: bool,
}

/// Where a node is drawn (top-left corner).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    pub x: f64,
    pub y: f64,
}

pub const NODE_W: f64 = 210.0;
pub const NODE_H: f64 = 42.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 48.0;
const PAD: f64 = 8.0;

/// Layers by longest path from the roots (parents above their children), ordered within a layer
/// by the mean position of their parents. `edges` are (parent, child) ids; unknown ids and cycles
/// are tolerated (a cycle's nodes stay on the layer reached first).
pub fn layout(nodes: &[DagNode], edges: &[(String, String)]) -> Vec<Placed> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(p, c)| Some((*index.get(p.as_str())?, *index.get(c.as_str())?)))
        .filter(|(p, c)| p != c)
        .collect();
    let mut layer = vec![0usize; nodes.len()];
    // Longest-path layering by relaxation, bounded by the node count (cycles stop there).
    for _ in 0..nodes.len() {
        let mut changed = false;
        for &(p, c) in &edges {
            if layer[c] < layer[p] + 1 && layer[p] + 1 < nodes.len() {
                layer[c] = layer[p] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut layers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in layer.iter().enumerate() {
        layers.entry(l).or_default().push(i);
    }
    let mut column = vec![0f64; nodes.len()];
    for members in layers.values_mut() {
        let key = |i: usize| {
            let parents: Vec<f64> = edges
                .iter()
                .filter(|(_, c)| *c == i)
                .map(|(p, _)| column[*p])
                .collect();
            if parents.is_empty() {
                i as f64
            } else {
                parents.iter().sum::<f64>() / parents.len() as f64
            }
        };
        let mut keyed: Vec<(f64, usize)> = members.iter().map(|&i| (key(i), i)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        *members = keyed.into_iter().map(|(_, i)| i).collect();
        for (pos, &i) in members.iter().enumerate() {
            column[i] = pos as f64;
        }
    }
    let widest = layers.values().map(Vec::len).max().unwrap_or(1) as f64;
    let mut placed = vec![Placed { x: 0.0, y: 0.0 }; nodes.len()];
    for (&l, members) in &layers {
        // Centre each layer under the widest one.
        let offset = (widest - members.len() as f64) * (NODE_W + GAP_X) / 2.0;
        for (pos, &i) in members.iter().enumerate() {
            placed[i] = Placed {
                x: PAD + offset + pos as f64 * (NODE_W + GAP_X),
                y: PAD + l as f64 * (NODE_H + GAP_Y),
            };
        }
    }
    placed
}

/// The lineage graph as SVG: a box per version (a link), an arrow per parent → child edge.
pub fn dag_svg(nodes: &[DagNode], edges: &[(String, String)]) -> String {
    let placed = layout(nodes, edges);
    let width = placed.iter().map(|p| p.x + NODE_W).fold(0.0, f64::max) + PAD;
    let height = placed.iter().map(|p| p.y + NODE_H).fold(0.0, f64::max) + PAD;
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="group" aria-label="Lineage graph"><title>Lineage graph</title><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>"##
    );
    for (p, c) in edges {
        let (Some(&p), Some(&c)) = (index.get(p.as_str()), index.get(c.as_str())) else {
            continue;
        };
        let (a, b) = (placed[p], placed[c]);
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#6b7280" stroke-width="1.5" marker-end="url(#arrow)"/>"##,
            a.x + NODE_W / 2.0,
            a.y + NODE_H,
            b.x + NODE_W / 2.0,
            b.y
        );
    }
    for (n, p) in nodes.iter().zip(&placed) {
        let (fill, stroke) = if n.current {
            ("#dbeafe", "#2563eb")
        } else {
            ("#f9fafb", "#9ca3af")
        };
        let _ = write!(
            svg,
            r##"<a href="{href}"><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}"/><text x="{tx:.1}" y="{ty1:.1}" font-size="12" fill="#111827">{label}</text><text x="{tx:.1}" y="{ty2:.1}" font-size="11" fill="#4b5563">{sub}</text></a>"##,
            href = escape(&n.href),
            x = p.x,
            y = p.y,
            tx = p.x + 8.0,
            ty1 = p.y + 17.0,
            ty2 = p.y + 33.0,
            label = escape(&truncate(&n.label, 30)),
            sub = escape(&truncate(&n.sublabel, 32)),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(log_y: bool, points: Vec<(f64, f64)>) -> LinePlot {
        LinePlot {
            title: "t <x>".into(),
            x_label: "rank".into(),
            y_label: "σ".into(),
            log_y,
            series: vec![Series {
                name: "m".into(),
                points,
            }],
            width: 400.0,
            height: 300.0,
        }
    }

    #[test]
    fn points_land_where_their_values_say() {
        let p = plot(false, vec![(1.0, 0.0), (3.0, 10.0), (5.0, 5.0)]);
        let f = p.frame();
        let pts = p.polyline(&f, &p.series[0]);
        let (l, r) = (MARGIN_LEFT, 400.0 - MARGIN_RIGHT);
        let (t, b) = (MARGIN_TOP, 300.0 - MARGIN_BOTTOM);
        assert_eq!(pts[0], (l, b), "x min, y 0 → bottom left");
        assert_eq!(pts[1], ((l + r) / 2.0, t), "y max → top");
        assert_eq!(pts[2], (r, (t + b) / 2.0), "half of y max → middle");
        let svg = p.render();
        assert!(
            svg.contains("t &lt;x&gt;") && !svg.contains("<x>"),
            "titles are escaped"
        );
        assert!(svg.contains(&format!("{:.1},{:.1}", pts[1].0, pts[1].1)));
    }

    #[test]
    fn log_plots_space_decades_evenly_and_skip_non_positive_values() {
        let p = plot(
            true,
            vec![(1.0, 100.0), (2.0, 10.0), (3.0, 1.0), (4.0, 0.0)],
        );
        let f = p.frame();
        let pts = p.polyline(&f, &p.series[0]);
        assert_eq!(pts.len(), 3);
        let (d1, d2) = (pts[1].1 - pts[0].1, pts[2].1 - pts[1].1);
        assert!((d1 - d2).abs() < 1e-9 && d1 > 0.0, "{d1} {d2}");
    }

    fn node(id: &str) -> DagNode {
        DagNode {
            id: id.into(),
            label: id.into(),
            sublabel: String::new(),
            href: format!("/{id}"),
            current: false,
        }
    }

    #[test]
    fn dag_layout_puts_parents_above_children_without_overlaps() {
        let nodes: Vec<DagNode> = ["a", "b", "c", "m", "n", "z"]
            .iter()
            .map(|i| node(i))
            .collect();
        let e = |p: &str, c: &str| (p.to_string(), c.to_string());
        let edges = vec![
            e("a", "m"),
            e("b", "m"),
            e("c", "n"),
            e("m", "n"),
            e("n", "z"),
            e("a", "z"),
        ];
        let placed = layout(&nodes, &edges);
        let at = |id: &str| placed[nodes.iter().position(|n| n.id == id).expect("present")];
        for (p, c) in &edges {
            assert!(at(p).y < at(c).y, "{p} above {c}");
        }
        for i in 0..placed.len() {
            for j in i + 1..placed.len() {
                let (a, b) = (placed[i], placed[j]);
                let apart = a.x + NODE_W <= b.x
                    || b.x + NODE_W <= a.x
                    || a.y + NODE_H <= b.y
                    || b.y + NODE_H <= a.y;
                assert!(apart, "{} and {} overlap", nodes[i].id, nodes[j].id);
            }
        }
        // A cycle does not hang the layout.
        let cyc = layout(&nodes[..2], &[e("a", "b"), e("b", "a")]);
        assert_eq!(cyc.len(), 2);
    }

    #[test]
    fn dag_svg_links_every_node_and_escapes_labels() {
        let mut n = node("x");
        n.label = "<script>alert(1)</script>".into();
        n.href = "/a/b?x=\"1\"".into();
        let svg = dag_svg(&[n, node("y")], &[("x".into(), "y".into())]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains(r#"href="/a/b?x=&quot;1&quot;""#));
        assert_eq!(svg.matches("<a href=").count(), 2);
        assert_eq!(svg.matches("marker-end").count(), 1);
    }
}
