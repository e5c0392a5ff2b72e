// A small SVG writer for the project's figures: line charts (training curves), grouped bar charts with error
// bars (scores per method and domain) and scatter plots with error bars (adaptation against forgetting), each
// with axes, "nice" ticks, a title and a legend; several charts can be laid out as panels of one file. Text is
// XML-escaped; non-finite values are left out (a line is broken there). The output opens in any browser.
//
// The geometry is fixed and public (kChartWidth ... kMarginBottom, Frame) so a test can check that a value is
// drawn where it should be. What this is not: a general plotting library (no log axes, no dates, no styling
// options beyond a fixed palette), and it reads no data files (sonar/experiment.h does).
#pragma once
#include <string>
#include <vector>

namespace sonar::plot {

// Size of one chart (panel) and its plot area's margins, in SVG user units (pixels).
constexpr double kChartWidth = 560;
constexpr double kChartHeight = 340;
constexpr double kMarginLeft = 70;
constexpr double kMarginRight = 150;  // the legend sits here
constexpr double kMarginTop = 36;
constexpr double kMarginBottom = 50;

// "&<>\"'" as XML entities; other control characters than tab and line breaks are dropped.
std::string xml_escape(const std::string& s);

// Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 x 10^k, about `target` of them; the first tick is
// <= lo and the last >= hi. A degenerate range (lo == hi) is widened around the value. Throws on non-finite
// input or lo > hi.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

// A value's text for a tick label: at most 4 significant digits, no trailing zeros ("0.25", "1200", "1e-05").
std::string format_tick(double v);

// The data-to-pixel mapping of one chart: the axis ranges (the first and last tick) and the plot area.
struct Frame {
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  std::vector<double> x_ticks, y_ticks;  // the ticks drawn; the first and last are the ranges
  double left = kMarginLeft, top = kMarginTop;
  double width = kChartWidth - kMarginLeft - kMarginRight;
  double height = kChartHeight - kMarginTop - kMarginBottom;
  double px(double x) const { return left + (x - x_min) / (x_max - x_min) * width; }
  double py(double y) const { return top + height - (y - y_min) / (y_max - y_min) * height; }
};

// One named series. Line charts: points (x[i], y[i]). Scatter: the same, with optional error bars y_err[i]
// and x_err[i] (half-widths; empty vectors or NaN entries mean none). Bar charts: y[i] is the bar of
// category i and y_err[i] its error bar; x is unused.
struct Series {
  std::string name;
  std::vector<double> x, y, y_err, x_err;
  std::string colour = "";  // "" = series_colour(index in its chart); set it to keep a name's colour across panels
  std::vector<std::string> labels = {};  // scatter: a text beside point i (empty vector or "" entries: none)
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
};

struct BarChart {
  std::string title, y_label;
  std::vector<std::string> categories;  // the groups along the x axis
  std::vector<Series> series;           // one bar per series in each group
};

struct ScatterChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool zero_lines = true;  // dashed lines at x = 0 and y = 0 when inside the ranges
};

// The frames the charts are drawn in (ranges from the finite values, error bars included; bar charts always
// include 0). Throws when a series' vectors have inconsistent lengths.
Frame line_frame(const LineChart& c);
Frame bar_frame(const BarChart& c);
Frame scatter_frame(const ScatterChart& c);

// One chart as an SVG group (<g>) translated to (dx, dy); the building block of svg_document.
std::string line_chart_group(const LineChart& c, double dx = 0, double dy = 0);
std::string bar_chart_group(const BarChart& c, double dx = 0, double dy = 0);
std::string scatter_chart_group(const ScatterChart& c, double dx = 0, double dy = 0);

// A whole SVG file: the groups laid out `columns` per row, each kChartWidth x kChartHeight, with an optional
// title above them.
std::string svg_document(const std::vector<std::string>& groups, int columns = 1, const std::string& title = "");

// Convenience: one chart as a whole file.
std::string line_chart_svg(const LineChart& c);
std::string bar_chart_svg(const BarChart& c);
std::string scatter_chart_svg(const ScatterChart& c);

// The colour of series i (a fixed, colour-blind-friendly palette, cycling).
std::string series_colour(size_t i);

}  // namespace sonar::plot
