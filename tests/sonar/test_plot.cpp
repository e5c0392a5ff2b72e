// Tests of the SVG writer (sonar/plot.h): every chart kind is well-formed XML (checked by the small checker in
// xml_check.h, which is itself checked on broken input), text is escaped, ticks are round numbers covering the
// data, and plotted values land on the pixel positions the documented geometry gives (computed here by hand
// from the layout constants, not through plot::Frame).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "sonar/plot.h"
#include "tests/sonar/xml_check.h"
#include "tests/test_util.h"

namespace plot = sonar::plot;
using sonar::testutil::check_xml;
using sonar::testutil::XmlCheck;
using sonar::testutil::XmlElement;

namespace {

constexpr double kPixelTolerance = 0.006;  // coordinates are written with 2 decimals
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The plot area by hand: 560 x 340 panel, margins 70 left, 150 right, 36 top, 50 bottom.
constexpr double kLeft = 70, kTop = 36, kWidth = 560 - 70 - 150, kHeight = 340 - 36 - 50;

double px(double x, double lo, double hi) { return kLeft + (x - lo) / (hi - lo) * kWidth; }
double py(double y, double lo, double hi) { return kTop + kHeight - (y - lo) / (hi - lo) * kHeight; }

std::vector<const XmlElement*> all(const XmlCheck& c, const std::string& name, const std::string& cls = "") {
  std::vector<const XmlElement*> out;
  for (const auto& e : c.elements)
    if (e.name == name && (cls.empty() || (e.attrs.count("class") && e.attrs.at("class") == cls))) out.push_back(&e);
  return out;
}

std::vector<std::pair<double, double>> points_of(const std::string& attr) {
  std::vector<std::pair<double, double>> p;
  std::istringstream in(attr);
  for (std::string tok; in >> tok;) {
    const size_t c = tok.find(',');
    p.emplace_back(std::stod(tok.substr(0, c)), std::stod(tok.substr(c + 1)));
  }
  return p;
}

double attr(const XmlElement* e, const std::string& a) { return std::stod(e->attrs.at(a)); }

}  // namespace

TEST(XmlCheck, AcceptsWellFormedAndRejectsBroken) {
  EXPECT_TRUE(check_xml("<?xml version=\"1.0\"?>\n<a x=\"1 &amp; 2\"><b/>t&lt;<c y='2'>z</c></a>\n").ok);
  for (const char* bad : {"<a><b></a></b>", "<a x=1></a>", "<a>1 & 2</a>", "<a>x<</a>", "<a></a><b></b>",
                          "<a x=\"<\"></a>", "<a>", "text<a></a>", "<a x=\"1\" x=\"2\"/>", "<a>&bogus;</a>"})
    EXPECT_FALSE(check_xml(bad).ok) << bad;
}

TEST(Plot, EscapesText) {
  EXPECT_EQ(plot::xml_escape("a<b & \"c\" 'd' >"), "a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt;");
  EXPECT_EQ(plot::xml_escape(std::string("x\x01y")), "xy");
  plot::LineChart c;
  c.title = "loss <&> \"terms\"";
  c.series.push_back({"sonar & <dcpt>", {0, 1}, {1, 2}, {}, {}});
  const XmlCheck x = check_xml(plot::line_chart_svg(c));
  ASSERT_TRUE(x.ok) << x.error;
  bool title = false, legend = false;
  for (const auto* t : all(x, "text")) {
    title = title || t->text == "loss <&> \"terms\"";
    legend = legend || t->text == "sonar & <dcpt>";
  }
  EXPECT_TRUE(title);
  EXPECT_TRUE(legend);
}

TEST(Plot, NiceTicksAreRoundAndCoverTheData) {
  EXPECT_EQ(plot::nice_ticks(0, 1), (std::vector<double>{0, 0.25, 0.5, 0.75, 1}));
  EXPECT_EQ(plot::nice_ticks(3, 97), (std::vector<double>{0, 25, 50, 75, 100}));
  const auto t = plot::nice_ticks(0.812, 0.947);
  ASSERT_GE(t.size(), 2u);
  EXPECT_LE(t.front(), 0.812);
  EXPECT_GE(t.back(), 0.947);
  EXPECT_NEAR(t[1] - t[0], 0.05, 1e-12);
  const auto neg = plot::nice_ticks(-0.03, 0.02);
  EXPECT_LE(neg.front(), -0.03);
  EXPECT_GE(neg.back(), 0.02);
  bool has_zero = false;
  for (double v : neg) has_zero = has_zero || v == 0.0;
  EXPECT_TRUE(has_zero);
  const auto flat = plot::nice_ticks(2, 2);  // a constant series still gets an axis around it
  EXPECT_LT(flat.front(), 2);
  EXPECT_GT(flat.back(), 2);
  EXPECT_EQ(plot::format_tick(0.25), "0.25");
  EXPECT_EQ(plot::format_tick(1200), "1200");
  EXPECT_EQ(plot::format_tick(-0.0), "0");
  sonar::testutil::expect_error([] { plot::nice_ticks(1, 0); }, {"bad axis range"});
  sonar::testutil::expect_error([] { plot::nice_ticks(0, kNaN); }, {"bad axis range"});
}

TEST(Plot, LineChartPutsPointsWhereTheGeometrySays) {
  plot::LineChart c;
  c.title = "curves";
  c.x_label = "step";
  c.y_label = "loss";
  // x in [0, 100], y in [0, 1]: the axes are exactly these ranges (round ticks 0..100 and 0..1).
  c.series.push_back({"a", {0, 50, 100}, {1.0, 0.5, 0.0}, {}, {}});
  c.series.push_back({"b", {0, 25, 50, 75, 100}, {0.2, kNaN, 0.4, 0.6, 0.8}, {}, {}});  // NaN breaks the line
  const XmlCheck x = check_xml(plot::line_chart_svg(c));
  ASSERT_TRUE(x.ok) << x.error;
  const auto lines = all(x, "polyline");
  ASSERT_EQ(lines.size(), 2u);  // "a" one line; "b": the single point before the NaN draws no line
  const auto a = points_of(lines[0]->attrs.at("points"));
  ASSERT_EQ(a.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(a[i].first, px(c.series[0].x[i], 0, 100), kPixelTolerance);
    EXPECT_NEAR(a[i].second, py(c.series[0].y[i], 0, 1), kPixelTolerance);
  }
  EXPECT_NEAR(a[1].first, 240.0, kPixelTolerance);  // 70 + 340 / 2
  EXPECT_NEAR(a[1].second, 163.0, kPixelTolerance); // 36 + 254 / 2
  const auto b = points_of(lines[1]->attrs.at("points"));
  ASSERT_EQ(b.size(), 3u);  // x = 50, 75, 100
  EXPECT_NEAR(b[0].first, px(50, 0, 100), kPixelTolerance);
  EXPECT_NEAR(b[2].second, py(0.8, 0, 1), kPixelTolerance);
  const plot::Frame f = plot::line_frame(c);
  EXPECT_EQ(f.x_min, 0);
  EXPECT_EQ(f.x_max, 100);
  EXPECT_EQ(f.y_min, 0);
  EXPECT_EQ(f.y_max, 1);
}

TEST(Plot, BarChartHeightsAndErrorBars) {
  plot::BarChart c;
  c.title = "new-domain F1";
  c.y_label = "macro-F1";
  c.categories = {"speech", "birds"};
  c.series.push_back({"dcpt", {}, {0.5, 1.0}, {0.1, 0.1}, {}});
  c.series.push_back({"sonar", {}, {0.25, kNaN}, {}, {}});  // a missing value draws no bar
  const XmlCheck x = check_xml(plot::bar_chart_svg(c));
  ASSERT_TRUE(x.ok) << x.error;
  // Data with error bars spans [0, 1.1]: ticks of 0.5 from 0 to 1.5.
  const plot::Frame f = plot::bar_frame(c);
  EXPECT_EQ(f.y_min, 0);
  EXPECT_EQ(f.y_max, 1.5);
  const auto bars = all(x, "rect", "bar");
  ASSERT_EQ(bars.size(), 3u);
  const double values[] = {0.5, 1.0, 0.25};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(attr(bars[i], "height"), values[i] / 1.5 * kHeight, kPixelTolerance) << i;
    EXPECT_NEAR(attr(bars[i], "y") + attr(bars[i], "height"), kTop + kHeight, kPixelTolerance) << i;
  }
  // Category i spans [i, i + 1] of the x range [0, 2]; the first bar of group 0 starts at 0.1 (80% filled).
  EXPECT_NEAR(attr(bars[0], "x"), px(0.1, 0, 2), kPixelTolerance);
  EXPECT_NEAR(attr(bars[0], "width"), 0.4 / 2 * kWidth, kPixelTolerance);
  // Error bars: the vertical stroke of the first bar runs from 0.4 to 0.6.
  const auto errs = all(x, "line", "error");
  ASSERT_EQ(errs.size(), 2u);
  EXPECT_NEAR(attr(errs[0], "y1"), py(0.4, 0, 1.5), kPixelTolerance);
  EXPECT_NEAR(attr(errs[0], "y2"), py(0.6, 0, 1.5), kPixelTolerance);
  EXPECT_NEAR(attr(errs[0], "x1"), px(0.3, 0, 2), kPixelTolerance);
  sonar::testutil::expect_error(
      [] {
        plot::BarChart bad;
        bad.categories = {"a", "b"};
        bad.series.push_back({"s", {}, {1.0}, {}, {}});
        plot::bar_chart_svg(bad);
      },
      {"bar series 's'", "1 values for 2 categories"});
}

TEST(Plot, ScatterWithBothErrorBarsAndTheOrigin) {
  plot::ScatterChart c;
  c.title = "adaptation vs forgetting";
  c.x_label = "forgetting";
  c.y_label = "gain";
  c.series.push_back({"dcpt", {0.5}, {0.75}, {0.25}, {0.25}});
  c.series.push_back({"sonar", {-0.75}, {0.25}, {}, {}});
  c.series[1].labels = {"genre"};  // a point may carry a label (the experiment names the domain)
  const XmlCheck x = check_xml(plot::scatter_chart_svg(c));
  ASSERT_TRUE(x.ok) << x.error;
  // x spans [-0.75, 0.75] -> ticks -1..1 (step 0.5); y spans [0, 1] with the origin -> 0..1.
  const plot::Frame f = plot::scatter_frame(c);
  EXPECT_EQ(f.x_min, -1);
  EXPECT_EQ(f.x_max, 1);
  EXPECT_EQ(f.y_min, 0);
  EXPECT_EQ(f.y_max, 1);
  const auto pts = all(x, "circle", "point");
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_NEAR(attr(pts[0], "cx"), px(0.5, -1, 1), kPixelTolerance);
  EXPECT_NEAR(attr(pts[0], "cy"), py(0.75, 0, 1), kPixelTolerance);
  EXPECT_NEAR(attr(pts[1], "cx"), px(-0.75, -1, 1), kPixelTolerance);
  const auto errs = all(x, "line", "error");
  ASSERT_EQ(errs.size(), 2u);  // one vertical, one horizontal, both for "dcpt"
  EXPECT_NEAR(attr(errs[1], "x1"), px(0.25, -1, 1), kPixelTolerance);
  EXPECT_NEAR(attr(errs[1], "x2"), px(0.75, -1, 1), kPixelTolerance);
  const auto labels = all(x, "text", "point-label");
  ASSERT_EQ(labels.size(), 1u);  // "dcpt" has none
  EXPECT_EQ(labels[0]->text, "genre");
  EXPECT_GT(attr(labels[0], "x"), px(-0.75, -1, 1));  // right of its point
  EXPECT_LT(attr(labels[0], "y"), py(0.25, 0, 1));    // and above it
}

TEST(Plot, PanelsInOneDocument) {
  plot::LineChart a;
  a.series.push_back({"s", {0, 1}, {0, 1}, {}, {}});
  plot::BarChart b;
  b.categories = {"x"};
  b.series.push_back({"s", {}, {1}, {}, {}});
  const std::string svg = plot::svg_document({plot::line_chart_group(a), plot::bar_chart_group(b),
                                              plot::line_chart_group(a)}, 2, "three panels");
  const XmlCheck x = check_xml(svg);
  ASSERT_TRUE(x.ok) << x.error;
  ASSERT_FALSE(x.elements.empty());
  EXPECT_EQ(x.elements[0].name, "svg");
  EXPECT_EQ(x.elements[0].attrs.at("width"), "1120.00");  // two columns of 560
  EXPECT_EQ(x.elements[0].attrs.at("height"), "710.00");  // two rows of 340 plus the 30-unit title
  EXPECT_EQ(all(x, "g", "line-chart").size(), 2u);
  EXPECT_EQ(all(x, "g", "bar-chart").size(), 1u);
}
