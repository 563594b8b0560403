//! Domain values every service shares: money and the ids that cross service boundaries.
//!
//! Money is an integer count of the currency's minor units (cents for EUR, yen for JPY) with
//! its ISO 4217 currency, never a float. Arithmetic is checked: it refuses to mix currencies
//! and to overflow, rather than produce a wrong total.
//!
//! ```
//! use shop_common::domain::{Currency, Money};
//!
//! let eur = Currency::new("EUR")?;
//! let kettle = Money::new(2_499, eur);
//! let total = kettle.checked_mul(2)?.checked_add(Money::new(490, eur))?;
//! assert_eq!(total.to_string(), "54.88 EUR");
//! assert!(total.checked_add(Money::new(1, Currency::new("USD")?)).is_err());
//! # Ok::<(), shop_common::domain::MoneyError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Money could not be made or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not three upper-case ASCII letters.
    #[error("{0:?} is not an ISO 4217 currency code (three upper-case letters, such as EUR)")]
    BadCurrency(String),
    /// Amounts in two currencies.
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    /// The result does not fit in 64 bits of minor units.
    #[error("amount out of range")]
    Overflow,
}

/// An ISO 4217 currency code: three upper-case ASCII letters. The code's form is checked, not
/// its membership of the standard's current list, which changes; a service that sells in a
/// fixed set of currencies checks that set itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// The currency with this code.
    ///
    /// # Errors
    ///
    /// [`MoneyError::BadCurrency`] unless `code` is three upper-case ASCII letters.
    pub fn new(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(MoneyError::BadCurrency(code.chars().take(16).collect())),
        }
    }

    /// The code, e.g. `EUR`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Three ASCII letters, checked in `new`.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// The digits after the decimal point of its minor unit: 0 for JPY or KRW, 3 for BHD or
    /// KWD, 2 for the others.
    #[must_use]
    pub fn minor_digits(self) -> u32 {
        match &self.0 {
            b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG"
            | b"RWF" | b"UGX" | b"UYI" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
            b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: whole minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// `amount_minor` minor units of `currency` (negative for a refund or a discount).
    #[must_use]
    pub const fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }

    /// Zero in `currency`.
    #[must_use]
    pub const fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// The amount in minor units.
    #[must_use]
    pub const fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    /// The currency.
    #[must_use]
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    fn same_currency(self, other: Self) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    /// The sum.
    ///
    /// # Errors
    ///
    /// Different currencies, or a sum out of range.
    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let sum = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(sum, self.currency))
    }

    /// The difference.
    ///
    /// # Errors
    ///
    /// Different currencies, or a difference out of range.
    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let difference = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(difference, self.currency))
    }

    /// `quantity` times the amount (a line of an order).
    ///
    /// # Errors
    ///
    /// A product out of range.
    pub fn checked_mul(self, quantity: u32) -> Result<Self, MoneyError> {
        let product = self
            .amount_minor
            .checked_mul(i64::from(quantity))
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(product, self.currency))
    }
}

/// The amount in major units with the currency's minor digits, then the code: `12.34 EUR`,
/// `-0.05 EUR`, `500 JPY`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_digits();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let units = self.amount_minor.unsigned_abs();
        let scale = 10_u64.pow(digits);
        if digits == 0 {
            write!(f, "{sign}{units} {}", self.currency)
        } else {
            let (major, minor) = (units / scale, units % scale);
            let width = digits as usize;
            write!(f, "{sign}{major}.{minor:0width$} {}", self.currency)
        }
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user's id (a UUID, issued by the users service; the `sub` of their tokens).
    UserId
);
id_type!(
    /// A product's id (a slug, chosen by the catalog's admin).
    ProductId
);
id_type!(
    /// An order's id.
    OrderId
);
id_type!(
    /// A saga's id: the checkout of one order.
    SagaId
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn eur() -> Currency {
        Currency::new("EUR").unwrap()
    }

    #[test]
    fn only_three_upper_case_letters_are_a_currency() {
        for good in ["EUR", "USD", "JPY", "XAU"] {
            assert_eq!(Currency::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "eur", "EU", "EURO", "E1R", "ÉUR", "€€€", "EU "] {
            assert_eq!(
                Currency::new(bad),
                Err(MoneyError::BadCurrency(bad.to_owned()))
            );
        }
        let json: Result<Currency, _> = serde_json::from_str(r#""eur""#);
        assert!(json.unwrap_err().to_string().contains("not an ISO 4217"));
        assert_eq!(serde_json::to_string(&eur()).unwrap(), r#""EUR""#);
    }

    #[test]
    fn amounts_print_with_their_currencys_minor_digits() {
        let cases = [
            (1234, "EUR", "12.34 EUR"),
            (5, "EUR", "0.05 EUR"),
            (-5, "EUR", "-0.05 EUR"),
            (500, "JPY", "500 JPY"),
            (1_234, "KWD", "1.234 KWD"),
            (i64::MIN, "EUR", "-92233720368547758.08 EUR"),
        ];
        for (minor, code, shown) in cases {
            assert_eq!(
                Money::new(minor, Currency::new(code).unwrap()).to_string(),
                shown
            );
        }
    }

    #[test]
    fn money_round_trips_through_json() {
        let money = Money::new(2_499, eur());
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"amount_minor":2499,"currency":"EUR"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
    }

    proptest! {
        #[test]
        fn arithmetic_never_mixes_currencies_or_wraps(
            a in any::<i64>(),
            b in any::<i64>(),
            quantity in any::<u32>(),
            other in "[A-Z]{3}",
        ) {
            let (x, y) = (Money::new(a, eur()), Money::new(b, eur()));
            prop_assert_eq!(x.checked_add(y).ok().map(|m| m.amount_minor()), a.checked_add(b));
            prop_assert_eq!(x.checked_sub(y).ok().map(|m| m.amount_minor()), a.checked_sub(b));
            prop_assert_eq!(
                x.checked_mul(quantity).ok().map(|m| m.amount_minor()),
                a.checked_mul(i64::from(quantity))
            );
            let other = Currency::new(&other).unwrap();
            if other != eur() {
                let foreign = Money::new(b, other);
                prop_assert_eq!(x.checked_add(foreign), Err(MoneyError::CurrencyMismatch(eur(), other)));
                prop_assert_eq!(x.checked_sub(foreign), Err(MoneyError::CurrencyMismatch(eur(), other)));
            }
        }
    }
}
