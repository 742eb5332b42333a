//! Quiver's numerical core. In this tier: the adapter formats that upload validation needs.
