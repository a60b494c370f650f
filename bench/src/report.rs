//! One run's results: ordered key/value pairs printed as one JSON line or as text.

use hdrhistogram::Histogram;

/// A result value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A count.
    Int(u64),
    /// A measured quantity.
    Num(f64),
    /// A label or an error.
    Str(String),
}

/// Results of one load-generator run, in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct Report {
    fields: Vec<(String, Val)>,
}

impl Report {
    /// Adds a count.
    pub fn int(&mut self, k: &str, v: u64) {
        self.fields.push((k.to_string(), Val::Int(v)));
    }

    /// Adds a quantity (NaN and infinities become JSON null).
    pub fn num(&mut self, k: &str, v: f64) {
        self.fields.push((k.to_string(), Val::Num(v)));
    }

    /// Adds a string.
    pub fn str(&mut self, k: &str, v: &str) {
        self.fields.push((k.to_string(), Val::Str(v.to_string())));
    }

    /// Adds `{prefix}_p50_us`, `_p99_us`, `_p999_us`, `_max_us` and `_n` of a histogram in µs.
    pub fn hist(&mut self, prefix: &str, h: &Histogram<u64>) {
        self.int(&format!("{prefix}_n"), h.len());
        if h.is_empty() {
            return;
        }
        self.int(&format!("{prefix}_p50_us"), h.value_at_quantile(0.50));
        self.int(&format!("{prefix}_p99_us"), h.value_at_quantile(0.99));
        self.int(&format!("{prefix}_p999_us"), h.value_at_quantile(0.999));
        self.int(&format!("{prefix}_max_us"), h.max());
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_str(k));
            s.push(':');
            match v {
                Val::Int(n) => s.push_str(&n.to_string()),
                Val::Num(x) if x.is_finite() => s.push_str(&format!("{x:.3}")),
                Val::Num(_) => s.push_str("null"),
                Val::Str(t) => s.push_str(&json_str(t)),
            }
        }
        s.push('}');
        s
    }

    /// `key = value` lines for a person.
    pub fn to_text(&self) -> String {
        let w = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &self.fields {
            let v = match v {
                Val::Int(n) => n.to_string(),
                Val::Num(x) => format!("{x:.3}"),
                Val::Str(t) => t.clone(),
            };
            s.push_str(&format!("{k:<w$}  {v}\n"));
        }
        s
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_valid_and_ordered() {
        let mut r = Report::default();
        r.str("workload", "w1");
        r.int("deliveries", 10);
        r.num("dps", 2.5);
        r.num("nan", f64::NAN);
        r.str("error", "a \"quoted\"\nline");
        assert_eq!(
            r.to_json(),
            "{\"workload\":\"w1\",\"deliveries\":10,\"dps\":2.500,\"nan\":null,\
             \"error\":\"a \\\"quoted\\\"\\u000aline\"}"
        );
        assert!(r.to_text().contains("deliveries  10\n"));
    }
}
