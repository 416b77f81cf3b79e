// Plain Java 17 library, no Android dependency: metadata parsing (TFLite flatbuffer + JSON),
// Pillow-exact preprocessing, softmax/top-k. The same sources are compiled and tested without
// Gradle by run-tests.sh (javac + Debian's junit4).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

dependencies {
    testImplementation(libs.junit)
}

tasks.test {
    useJUnit()
    systemProperty("java.awt.headless", "true")
}
