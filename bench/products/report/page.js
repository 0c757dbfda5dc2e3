// index.html's results table (bench.products.report.html inlines this script): reads the rows from the
// JSON block, builds the table, sorts on a header click and filters by the select boxes and the text box.
// It writes text only (textContent), never markup, so nothing from the store can become HTML.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const table = document.getElementById("results-table");
  const head = table.tHead.rows[0];
  const body = table.tBodies[0];
  const count = document.getElementById("row-count");
  const filterBox = document.getElementById("filters");
  const numeric = new Set(["epsilon", "accuracy", "interval", "seeds"]); // right-aligned
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const rows = data.rows.map((row, index) => Object.assign({ index: index }, row));
  const selects = [];
  let sortKey = null;
  let direction = 1;

  // Missing values (null) sort last in both directions; numbers numerically; text numeric-aware.
  function compare(a, b) {
    const x = a.cells[sortKey][1];
    const y = b.cells[sortKey][1];
    if (x === null || y === null) {
      return x === y ? a.index - b.index : x === null ? 1 : -1;
    }
    const order = typeof x === "number" && typeof y === "number" ? x - y : collator.compare(String(x), String(y));
    return order === 0 ? a.index - b.index : direction * order;
  }

  function visible(row, text) {
    for (const select of selects) {
      if (select.value !== "" && row.cells[select.dataset.key][0] !== select.value) {
        return false;
      }
    }
    if (text === "") {
      return true;
    }
    return data.columns.some((column) => row.cells[column.key][0].toLowerCase().includes(text));
  }

  function render() {
    const text = document.getElementById("filter-text").value.trim().toLowerCase();
    const shown = rows.filter((row) => visible(row, text));
    if (sortKey !== null) {
      shown.sort(compare);
    }
    const fragment = document.createDocumentFragment();
    for (const row of shown) {
      const tr = document.createElement("tr");
      for (const column of data.columns) {
        const [label, key] = row.cells[column.key];
        const td = document.createElement("td");
        td.dataset.key = column.key;
        td.dataset.sort = key === null ? "" : String(key);
        if (numeric.has(column.key)) {
          td.className = "num";
        }
        if (column.key === "accuracy" && row.best) {
          const strong = document.createElement("strong");
          strong.textContent = label;
          td.appendChild(strong);
        } else {
          td.textContent = label;
        }
        tr.appendChild(td);
      }
      fragment.appendChild(tr);
    }
    body.replaceChildren(fragment);
    count.textContent = shown.length + " of " + rows.length + " rows";
  }

  function sortBy(key) {
    direction = sortKey === key ? -direction : 1;
    sortKey = key;
    for (const th of head.cells) {
      th.setAttribute("aria-sort", th.dataset.key === key ? (direction === 1 ? "ascending" : "descending") : "none");
    }
    render();
  }

  for (const column of data.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.tabIndex = 0;
    th.textContent = column.label;
    th.dataset.key = column.key;
    th.setAttribute("aria-sort", "none");
    th.addEventListener("click", () => sortBy(column.key));
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortBy(column.key);
      }
    });
    head.appendChild(th);
  }

  for (const filter of data.filters) {
    const label = document.createElement("label");
    const select = document.createElement("select");
    select.id = "filter-" + filter.key;
    select.dataset.key = filter.key;
    select.add(new Option("all", ""));
    const seen = new Set();
    for (const row of rows) {
      const value = row.cells[filter.key][0];
      if (!seen.has(value)) {
        seen.add(value);
        select.add(new Option(value, value));
      }
    }
    select.addEventListener("change", render);
    label.append(filter.label + " ", select);
    filterBox.appendChild(label);
    selects.push(select);
  }
  const search = document.createElement("input");
  search.type = "search";
  search.id = "filter-text";
  search.placeholder = "text in any column";
  search.addEventListener("input", render);
  const searchLabel = document.createElement("label");
  searchLabel.append("Filter ", search);
  filterBox.appendChild(searchLabel);

  render();
})();
