import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

// -Pedgevit.executorch=true adds ExecuTorch's runtime (and its .pte runner) to the APK.
val withExecutorch = providers.gradleProperty("edgevit.executorch").orNull?.toBoolean() ?: false
// -Pedgevit.model=NAME picks the model asset; empty: the first .tflite (or .pte) in assets/.
val modelAsset = providers.gradleProperty("edgevit.model").orNull ?: ""

android {
    namespace = "dev.edgevit.android"
    compileSdk = 36

    defaultConfig {
        applicationId = "dev.edgevit.android"
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "0.1.0"
        buildConfigField("String", "MODEL_ASSET", "\"$modelAsset\"")
        buildConfigField("boolean", "WITH_EXECUTORCH", withExecutorch.toString())
        if (withExecutorch) {
            // ExecuTorch's AAR ships these two ABIs only.
            ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
        }
    }

    buildFeatures {
        buildConfig = true
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // a demo: installable without a release key
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // Models are read straight from the APK: keep them uncompressed.
    androidResources {
        noCompress.addAll(listOf("tflite", "pte"))
    }

    sourceSets {
        getByName("main") {
            java.srcDir(if (withExecutorch) "src/executorch/java" else "src/noexecutorch/java")
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    implementation(project(":core"))

    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.appcompat)
    implementation(libs.androidx.activity.ktx)
    implementation(libs.androidx.constraintlayout)

    implementation(libs.camerax.core)
    implementation(libs.camerax.camera2)
    implementation(libs.camerax.lifecycle)
    implementation(libs.camerax.view)

    implementation(libs.litert)
    if (withExecutorch) {
        implementation(libs.executorch.android)
    }
}
