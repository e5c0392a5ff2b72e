// The SVG writer of sonar/plot.h: tick choice, the data-to-pixel frames and the three chart kinds. Plain string
// building; no XML library. Not a reader of metrics or results (sonar/experiment.cpp).
#include "sonar/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "tensor/error.h"

namespace sonar::plot {

namespace {

constexpr double kLegendRow = 16;       // legend line height
constexpr double kTickLength = 5;
constexpr double kMarkerRadius = 3.5;
constexpr double kErrorCap = 4;         // half-width of an error bar's cap
constexpr double kBarGroupFill = 0.8;   // share of a category's width its bars take
constexpr double kRangePad = 0.05;      // share of the data range added on each side of a degenerate range
constexpr size_t kMaxLegendChars = 22;  // longer series names are shortened in the legend

std::string num(double v) {  // coordinates: 2 decimals are sub-pixel
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

bool finite(double v) { return std::isfinite(v); }

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!finite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return lo > hi; }
};

double at_or_nan(const std::vector<double>& v, size_t i) {
  return i < v.size() ? v[i] : std::numeric_limits<double>::quiet_NaN();
}

void check_series(const Series& s, bool need_x) {
  if (need_x)
    SONAR_CHECK(s.x.size() == s.y.size(), "plot: series '", s.name, "' has ", s.x.size(), " x values and ", s.y.size(),
                " y values");
  SONAR_CHECK(s.y_err.empty() || s.y_err.size() == s.y.size(), "plot: series '", s.name, "' has ", s.y_err.size(),
              " y errors for ", s.y.size(), " values");
  SONAR_CHECK(s.x_err.empty() || s.x_err.size() == s.y.size(), "plot: series '", s.name, "' has ", s.x_err.size(),
              " x errors for ", s.y.size(), " values");
}

// Axis range from the data range: the outer ticks.
void set_axis(const Range& r, double& lo, double& hi, std::vector<double>& ticks) {
  if (r.empty()) {
    ticks = nice_ticks(0, 1);
  } else {
    ticks = nice_ticks(r.lo, r.hi);
  }
  lo = ticks.front();
  hi = ticks.back();
}

std::string text(double x, double y, const std::string& s, const std::string& anchor, int size,
                 const std::string& extra = "") {
  std::ostringstream o;
  o << "<text x=\"" << num(x) << "\" y=\"" << num(y) << "\" font-size=\"" << size << "\" text-anchor=\"" << anchor
    << "\"" << (extra.empty() ? "" : " " + extra) << ">" << xml_escape(s) << "</text>\n";
  return o.str();
}

std::string line(double x1, double y1, double x2, double y2, const std::string& stroke, double width = 1,
                 const std::string& extra = "") {
  std::ostringstream o;
  o << "<line x1=\"" << num(x1) << "\" y1=\"" << num(y1) << "\" x2=\"" << num(x2) << "\" y2=\"" << num(y2)
    << "\" stroke=\"" << stroke << "\" stroke-width=\"" << num(width) << "\"" << (extra.empty() ? "" : " " + extra)
    << "/>\n";
  return o.str();
}

std::string shorten(const std::string& s) {
  return s.size() <= kMaxLegendChars ? s : s.substr(0, kMaxLegendChars - 3) + "...";
}

// Axes, grid, ticks and labels of a frame; x ticks either numeric (x_ticks) or category names at given x.
std::string axes(const Frame& f, const std::vector<double>& x_ticks, const std::vector<double>& y_ticks,
                 const std::string& title, const std::string& x_label, const std::string& y_label,
                 const std::vector<std::pair<double, std::string>>& categories = {}) {
  std::ostringstream o;
  o << "<rect x=\"" << num(f.left) << "\" y=\"" << num(f.top) << "\" width=\"" << num(f.width) << "\" height=\""
    << num(f.height) << "\" fill=\"white\" stroke=\"#444\" stroke-width=\"1\"/>\n";
  const double bottom = f.top + f.height;
  for (double t : y_ticks) {
    const double y = f.py(t);
    o << line(f.left, y, f.left + f.width, y, "#ddd", 0.5);
    o << line(f.left - kTickLength, y, f.left, y, "#444");
    o << text(f.left - kTickLength - 3, y + 4, format_tick(t), "end", 11);
  }
  for (double t : x_ticks) {
    const double x = f.px(t);
    o << line(x, bottom, x, bottom + kTickLength, "#444");
    o << text(x, bottom + kTickLength + 12, format_tick(t), "middle", 11);
  }
  for (const auto& [x, name] : categories) o << text(x, bottom + kTickLength + 12, name, "middle", 11);
  o << text(f.left + f.width / 2, 20, title, "middle", 14, "font-weight=\"bold\"");
  if (!x_label.empty()) o << text(f.left + f.width / 2, bottom + 38, x_label, "middle", 12);
  if (!y_label.empty()) {
    const double x = 16, y = f.top + f.height / 2;
    o << text(x, y, y_label, "middle", 12, "transform=\"rotate(-90 " + num(x) + " " + num(y) + ")\"");
  }
  return o.str();
}

std::string colour_of(const std::vector<Series>& series, size_t i) {
  return series[i].colour.empty() ? series_colour(i) : series[i].colour;
}

std::string legend(const Frame& f, const std::vector<Series>& series, bool boxes) {
  std::ostringstream o;
  const double x = f.left + f.width + 12;
  for (size_t i = 0; i < series.size(); ++i) {
    const double y = f.top + 8 + kLegendRow * static_cast<double>(i);
    const std::string c = colour_of(series, i);
    if (boxes) {
      o << "<rect x=\"" << num(x) << "\" y=\"" << num(y - 5) << "\" width=\"14\" height=\"10\" fill=\"" << c << "\"/>\n";
    } else {
      o << line(x, y, x + 14, y, c, 2);
      o << "<circle cx=\"" << num(x + 7) << "\" cy=\"" << num(y) << "\" r=\"" << num(kMarkerRadius) << "\" fill=\"" << c
        << "\"/>\n";
    }
    o << text(x + 20, y + 4, shorten(series[i].name), "start", 11);
  }
  return o.str();
}

std::string error_bar_v(double x, double y_lo, double y_hi, const std::string& c) {
  return line(x, y_lo, x, y_hi, c, 1.2, "class=\"error\"") + line(x - kErrorCap, y_lo, x + kErrorCap, y_lo, c, 1.2) +
         line(x - kErrorCap, y_hi, x + kErrorCap, y_hi, c, 1.2);
}

std::string error_bar_h(double y, double x_lo, double x_hi, const std::string& c) {
  return line(x_lo, y, x_hi, y, c, 1.2, "class=\"error\"") + line(x_lo, y - kErrorCap, x_lo, y + kErrorCap, c, 1.2) +
         line(x_hi, y - kErrorCap, x_hi, y + kErrorCap, c, 1.2);
}

std::string open_group(double dx, double dy, const std::string& kind) {
  return "<g class=\"" + kind + "\" transform=\"translate(" + num(dx) + " " + num(dy) + ")\">\n";
}

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t' && ch != '\n' && ch != '\r') break;
        o += ch;
    }
  }
  return o;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  SONAR_CHECK(finite(lo) && finite(hi) && lo <= hi, "plot: bad axis range [", lo, ", ", hi, "]");
  SONAR_CHECK(target >= 2, "plot: at least 2 ticks, got ", target);
  if (hi == lo) {
    const double pad = lo == 0 ? 1.0 : std::fabs(lo) * kRangePad;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / static_cast<double>(target - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  const double first = std::floor(lo / step + 1e-9) * step;
  std::vector<double> t;
  for (int64_t k = 0;; ++k) {
    double v = first + static_cast<double>(k) * step;
    if (std::fabs(v) < step * 1e-9) v = 0.0;  // no "-0" or 1e-17 from rounding
    t.push_back(v);
    if (v >= hi - step * 1e-9) break;
  }
  return t;
}

std::string format_tick(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  std::string s = b;
  if (s == "-0") s = "0";
  return s;
}

std::string series_colour(size_t i) {
  // Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), black last.
  static const char* const kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                         "#E69F00", "#56B4E9", "#F0E442", "#000000"};
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

Frame line_frame(const LineChart& c) {
  Range rx, ry;
  for (const auto& s : c.series) {
    check_series(s, true);
    for (size_t i = 0; i < s.y.size(); ++i)
      if (finite(s.x[i]) && finite(s.y[i])) {
        rx.add(s.x[i]);
        ry.add(s.y[i]);
      }
  }
  Frame f;
  set_axis(rx, f.x_min, f.x_max, f.x_ticks);
  set_axis(ry, f.y_min, f.y_max, f.y_ticks);
  return f;
}

Frame bar_frame(const BarChart& c) {
  Range ry;
  ry.add(0.0);
  for (const auto& s : c.series) {
    check_series(s, false);
    SONAR_CHECK(s.y.size() == c.categories.size(), "plot: bar series '", s.name, "' has ", s.y.size(),
                " values for ", c.categories.size(), " categories");
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!finite(s.y[i])) continue;
      ry.add(s.y[i]);
      const double e = at_or_nan(s.y_err, i);
      if (finite(e)) {
        ry.add(s.y[i] + e);
        ry.add(s.y[i] - e);
      }
    }
  }
  Frame f;
  set_axis(ry, f.y_min, f.y_max, f.y_ticks);
  f.x_min = 0;
  f.x_max = std::max<double>(1, static_cast<double>(c.categories.size()));
  return f;
}

Frame scatter_frame(const ScatterChart& c) {
  Range rx, ry;
  for (const auto& s : c.series) {
    check_series(s, true);
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!finite(s.x[i]) || !finite(s.y[i])) continue;
      const double ex = at_or_nan(s.x_err, i), ey = at_or_nan(s.y_err, i);
      rx.add(s.x[i]);
      ry.add(s.y[i]);
      if (finite(ex)) {
        rx.add(s.x[i] - ex);
        rx.add(s.x[i] + ex);
      }
      if (finite(ey)) {
        ry.add(s.y[i] - ey);
        ry.add(s.y[i] + ey);
      }
    }
  }
  if (c.zero_lines && !rx.empty() && !ry.empty()) {  // keep the origin in view: "no change" is the reference
    rx.add(0.0);
    ry.add(0.0);
  }
  Frame f;
  set_axis(rx, f.x_min, f.x_max, f.x_ticks);
  set_axis(ry, f.y_min, f.y_max, f.y_ticks);
  return f;
}

std::string line_chart_group(const LineChart& c, double dx, double dy) {
  const Frame f = line_frame(c);
  std::ostringstream o;
  o << open_group(dx, dy, "line-chart");
  o << axes(f, f.x_ticks, f.y_ticks, c.title, c.x_label, c.y_label);
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    const std::string col = colour_of(c.series, k);
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">\n";
    // A polyline per run of finite points: a NaN breaks the line.
    std::string pts;
    size_t run = 0;
    auto flush = [&] {
      if (run >= 2)
        o << "<polyline fill=\"none\" stroke=\"" << col << "\" stroke-width=\"1.5\" points=\"" << pts << "\"/>\n";
      pts.clear();
      run = 0;
    };
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!finite(s.x[i]) || !finite(s.y[i])) {
        flush();
        continue;
      }
      if (!pts.empty()) pts += ' ';
      pts += num(f.px(s.x[i]));
      pts += ',';
      pts += num(f.py(s.y[i]));
      ++run;
    }
    flush();
    // Markers only when the points are few enough to see.
    if (s.y.size() <= 60)
      for (size_t i = 0; i < s.y.size(); ++i)
        if (finite(s.x[i]) && finite(s.y[i]))
          o << "<circle cx=\"" << num(f.px(s.x[i])) << "\" cy=\"" << num(f.py(s.y[i])) << "\" r=\"2\" fill=\"" << col
            << "\"/>\n";
    o << "</g>\n";
  }
  o << legend(f, c.series, false);
  o << "</g>\n";
  return o.str();
}

std::string bar_chart_group(const BarChart& c, double dx, double dy) {
  const Frame f = bar_frame(c);
  std::ostringstream o;
  o << open_group(dx, dy, "bar-chart");
  std::vector<std::pair<double, std::string>> cats;
  for (size_t i = 0; i < c.categories.size(); ++i) cats.emplace_back(f.px(static_cast<double>(i) + 0.5), c.categories[i]);
  o << axes(f, {}, f.y_ticks, c.title, "", c.y_label, cats);
  const double n = static_cast<double>(std::max<size_t>(1, c.series.size()));
  const double bar_w = kBarGroupFill / n;  // in category units
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    const std::string col = colour_of(c.series, k);
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">\n";
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!finite(s.y[i])) continue;
      const double x0 = static_cast<double>(i) + (1 - kBarGroupFill) / 2 + bar_w * static_cast<double>(k);
      const double px0 = f.px(x0), px1 = f.px(x0 + bar_w);
      const double y_top = f.py(std::max(0.0, s.y[i])), y_bottom = f.py(std::min(0.0, s.y[i]));
      o << "<rect class=\"bar\" x=\"" << num(px0) << "\" y=\"" << num(y_top) << "\" width=\"" << num(px1 - px0)
        << "\" height=\"" << num(y_bottom - y_top) << "\" fill=\"" << col << "\"><title>" << xml_escape(s.name)
        << ", " << xml_escape(c.categories[i]) << ": " << format_tick(s.y[i]) << "</title></rect>\n";
      const double e = at_or_nan(s.y_err, i);
      if (finite(e) && e > 0) o << error_bar_v((px0 + px1) / 2, f.py(s.y[i] - e), f.py(s.y[i] + e), "#222");
    }
    o << "</g>\n";
  }
  if (f.y_min < 0) o << line(f.left, f.py(0), f.left + f.width, f.py(0), "#444");
  o << legend(f, c.series, true);
  o << "</g>\n";
  return o.str();
}

std::string scatter_chart_group(const ScatterChart& c, double dx, double dy) {
  const Frame f = scatter_frame(c);
  std::ostringstream o;
  o << open_group(dx, dy, "scatter-chart");
  o << axes(f, f.x_ticks, f.y_ticks, c.title, c.x_label, c.y_label);
  if (c.zero_lines) {
    if (f.x_min < 0 && f.x_max > 0)
      o << line(f.px(0), f.top, f.px(0), f.top + f.height, "#888", 1, "stroke-dasharray=\"4 3\"");
    if (f.y_min < 0 && f.y_max > 0)
      o << line(f.left, f.py(0), f.left + f.width, f.py(0), "#888", 1, "stroke-dasharray=\"4 3\"");
  }
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    const std::string col = colour_of(c.series, k);
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">\n";
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!finite(s.x[i]) || !finite(s.y[i])) continue;
      const double x = f.px(s.x[i]), y = f.py(s.y[i]);
      const double ex = at_or_nan(s.x_err, i), ey = at_or_nan(s.y_err, i);
      if (finite(ey) && ey > 0) o << error_bar_v(x, f.py(s.y[i] - ey), f.py(s.y[i] + ey), col);
      if (finite(ex) && ex > 0) o << error_bar_h(y, f.px(s.x[i] - ex), f.px(s.x[i] + ex), col);
      o << "<circle class=\"point\" cx=\"" << num(x) << "\" cy=\"" << num(y) << "\" r=\"" << num(kMarkerRadius)
        << "\" fill=\"" << col << "\"><title>" << xml_escape(s.name) << ": (" << format_tick(s.x[i]) << ", "
        << format_tick(s.y[i]) << ")</title></circle>\n";
      if (i < s.labels.size() && !s.labels[i].empty())
        o << text(x + kMarkerRadius + 3, y - kMarkerRadius - 2, s.labels[i], "start", 10,
                  "class=\"point-label\" fill=\"" + col + "\"");
    }
    o << "</g>\n";
  }
  o << legend(f, c.series, false);
  o << "</g>\n";
  return o.str();
}

std::string svg_document(const std::vector<std::string>& groups, int columns, const std::string& title) {
  SONAR_CHECK(columns >= 1, "plot: columns must be >= 1, got ", columns);
  const size_t n = std::max<size_t>(1, groups.size());
  const size_t cols = std::min<size_t>(static_cast<size_t>(columns), n);
  const size_t rows = (n + cols - 1) / cols;
  const double head = title.empty() ? 0 : 30;
  const double w = kChartWidth * static_cast<double>(cols), h = kChartHeight * static_cast<double>(rows) + head;
  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(w) << "\" height=\"" << num(h) << "\" viewBox=\"0 0 "
    << num(w) << " " << num(h) << "\" font-family=\"sans-serif\">\n"
    << "<rect x=\"0\" y=\"0\" width=\"" << num(w) << "\" height=\"" << num(h) << "\" fill=\"white\"/>\n";
  if (!title.empty()) o << text(w / 2, 22, title, "middle", 16, "font-weight=\"bold\"");
  for (size_t i = 0; i < groups.size(); ++i) {
    const double dx = kChartWidth * static_cast<double>(i % cols);
    const double dy = head + kChartHeight * static_cast<double>(i / cols);
    o << "<g transform=\"translate(" << num(dx) << " " << num(dy) << ")\">\n" << groups[i] << "</g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string line_chart_svg(const LineChart& c) { return svg_document({line_chart_group(c)}); }
std::string bar_chart_svg(const BarChart& c) { return svg_document({bar_chart_group(c)}); }
std::string scatter_chart_svg(const ScatterChart& c) { return svg_document({scatter_chart_group(c)}); }

}  // namespace sonar::plot
