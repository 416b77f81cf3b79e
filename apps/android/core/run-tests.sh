#!/usr/bin/env bash
# Compile the core module and run its JUnit 4 tests with the JDK and Debian's junit4 package:
# plain javac/java, no Gradle or Maven, nothing downloaded.
#
#   apt-get install -y default-jdk-headless junit4     # JDK >= 17, /usr/share/java/junit4.jar
#   apps/android/core/run-tests.sh                     # all tests
#   apps/android/core/run-tests.sh dev.edgevit.core.JsonTest   # some test classes
#
# Environment: JUNIT_JAR, HAMCREST_JAR (jar locations), EDGEVIT_CORE_BUILD (build folder,
# default build/plain here), EDGEVIT_TEST_TFLITE / EDGEVIT_TEST_TFLITE_EXPECTED (an exported
# .tflite and the JSON description of its metadata entries, for ExportedTfliteTest).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${EDGEVIT_CORE_BUILD:-$here/build/plain}"
junit="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
hamcrest="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"

if ! command -v javac >/dev/null 2>&1; then
    echo "run-tests.sh: javac not found; install a JDK >= 17 (apt-get install -y default-jdk-headless)" >&2
    exit 3
fi
for jar in "$junit" "$hamcrest"; do
    if [ ! -f "$jar" ]; then
        echo "run-tests.sh: $jar not found; install JUnit 4 (apt-get install -y junit4)" >&2
        exit 3
    fi
done

rm -rf "$build"
mkdir -p "$build/main" "$build/test"
mapfile -t main_sources < <(find "$here/src/main/java" -name '*.java' | sort)
mapfile -t test_sources < <(find "$here/src/test/java" -name '*.java' | sort)

# The module must build with no dependency at all (it is a plain java-library for the app).
javac --release 17 -encoding UTF-8 -Xlint:all -Werror -d "$build/main" "${main_sources[@]}"
javac --release 17 -encoding UTF-8 -Xlint:all,-serial -d "$build/test" \
    -cp "$build/main:$junit:$hamcrest" "${test_sources[@]}"

if [ "$#" -gt 0 ]; then
    classes=("$@")
else
    mapfile -t classes < <(cd "$here/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
fi
exec java -Djava.awt.headless=true -cp "$build/main:$build/test:$here/src/test/resources:$junit:$hamcrest" \
    org.junit.runner.JUnitCore "${classes[@]}"
