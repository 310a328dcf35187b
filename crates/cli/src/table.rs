//! Plain text tables: columns padded to their widest cell.

/// `rows` (the first is the header) as lines of left-aligned columns two spaces apart.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_to_the_widest_cell() {
        let rows = vec![
            vec!["NAME".to_string(), "SIZE".to_string()],
            vec!["a-long-name".to_string(), "1".to_string()],
        ];
        assert_eq!(super::columns(&rows), "NAME         SIZE\na-long-name  1\n");
    }
}
