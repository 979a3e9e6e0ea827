//! One table model rendered two ways, so report.md and report.html always
//! show the same numbers.

/// A cell: text, or a number rendered with fixed precision; `Missing` says
/// the measurement is absent rather than inventing a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(u64),
    Float(f64, usize),
    Missing,
}

impl Cell {
    pub fn render(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f, digits) => format!("{f:.digits$}"),
            Cell::Missing => "—".to_string(),
        }
    }

    pub fn from_json_f64(v: &serde_json::Value, digits: usize) -> Cell {
        v.as_f64().map(|f| Cell::Float(f, digits)).unwrap_or(Cell::Missing)
    }

    pub fn from_json_u64(v: &serde_json::Value) -> Cell {
        v.as_u64().map(Cell::Int).unwrap_or(Cell::Missing)
    }
}

pub struct Table {
    pub title: String,
    pub note: Option<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            note: None,
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n", self.title);
        if let Some(note) = &self.note {
            out.push_str(&format!("{note}\n\n"));
        }
        if self.rows.is_empty() {
            out.push_str("_No artifact of this run provides this table._\n\n");
            return out;
        }
        out.push_str(&format!("| {} |\n", self.header.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            self.header.iter().map(|_| "---|").collect::<String>()
        ));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| c.render().replace('|', "\\|")).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out.push('\n');
        out
    }

    pub fn html(&self) -> String {
        let mut out = format!("<section>\n<h2>{}</h2>\n", escape(&self.title));
        if let Some(note) = &self.note {
            out.push_str(&format!("<p class=\"note\">{}</p>\n", escape(note)));
        }
        if self.rows.is_empty() {
            out.push_str("<p class=\"missing\">No artifact of this run provides this table.</p>\n</section>\n");
            return out;
        }
        out.push_str("<table>\n<thead><tr>");
        for h in &self.header {
            out.push_str(&format!("<th>{}</th>", escape(h)));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                let class = match cell {
                    Cell::Int(_) | Cell::Float(..) => " class=\"num\"",
                    Cell::Missing => " class=\"missing\"",
                    Cell::Text(_) => "",
                };
                out.push_str(&format!("<td{class}>{}</td>", escape(&cell.render())));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
        out
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
