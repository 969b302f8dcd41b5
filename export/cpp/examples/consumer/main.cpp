// consumer MODEL IMAGE...: classifies the files with fastmlr::Classifier; one line per image,
// "PATH<TAB>name=score,name=score<TAB>p0 p1 ...", or "PATH<TAB>error: ..." for a file it cannot read.
#include <fastmlr/classifier.h>

#include <cstdio>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: consumer MODEL IMAGE...\n";
    return 2;
  }
  try {
    fastmlr::Classifier clf(argv[1]);
    std::vector<std::string> paths(argv + 2, argv + argc);
    for (const fastmlr::FileResult& r : clf.classify_files(paths)) {
      std::cout << r.path << "\t";
      if (!r.ok()) {
        std::cout << "error: " << r.error << "\n";
        continue;
      }
      for (size_t k = 0; k < r.prediction.labels.size(); ++k)
        std::cout << (k ? "," : "") << r.prediction.labels[k].name << "=" << r.prediction.labels[k].score;
      std::cout << "\t";
      for (size_t c = 0; c < r.prediction.scores.size(); ++c) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%.9g", c ? " " : "", r.prediction.scores[c]);
        std::cout << buf;
      }
      std::cout << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
