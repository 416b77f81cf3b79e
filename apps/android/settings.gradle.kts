// edgevit Android camera classifier: the app (Kotlin, CameraX, LiteRT / optional ExecuTorch) and
// its plain-Java core (metadata, preprocessing, top-k), which is unit-tested without Android.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()        // AndroidX, CameraX, LiteRT
        mavenCentral()  // ExecuTorch (org.pytorch:executorch-android), JUnit
    }
}

rootProject.name = "edgevit-android"
include(":app", ":core")
